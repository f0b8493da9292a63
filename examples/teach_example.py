"""Action-GPT with TEACH: the class-level patch survives load_from_checkpoint (a new instance).

    python examples/teach_example.py [--aggregator masked-mean] [--backend embedded]

Runs in seconds with the TEACH stand-in and a tiny random DistilBERT under <root>/deps (TEACH's
model-path rule); docs/teach.md shows the same calls with the real TEACH code.
"""
from _common import ANNOTATIONS, actiongpt_config, arguments, workdir

import torch  # noqa: E402

from actiongpt_plugin import ActionGPT  # noqa: E402
from standins import teach as teach_standin  # noqa: E402
from standins import tiny_distilbert  # noqa: E402
from standins.teach import make_teach  # noqa: E402


def main():
    args = arguments(__doc__.splitlines()[0])
    with workdir("actiongpt-teach-") as work:
        tiny_distilbert(work / "deps" / "distilbert-base-uncased")
        teach_standin.ORIGINAL_CWD = str(work)  # what hydra.utils.get_original_cwd() returns in a TEACH run
        # TEACH keeps only the part of modelpath from 'deps' on and prefixes the original cwd.
        model = make_teach("/cluster/me/teach/deps/distilbert-base-uncased")
        labels = list(ANNOTATIONS)

        ag = ActionGPT(model, **actiongpt_config(args, work))
        ag.prepare(labels)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=7e-5)
        with ag:  # patches DistilbertEncoderBase.get_last_hidden_state for every instance
            model.train()
            for step in range(args.steps):
                batch = {"text_0": ["walk forward", "sit down"], "text_1": ["jump", "wave"], "length_0": [8, 8],
                         "length_1": [10, 10], "features_0": torch.randn(2, 8, 6), "features_1": torch.randn(2, 10, 6)}
                loss = model.training_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                print(f"step {step}: loss {loss.item():.4f}")
            model.dump_checkpoint(work / "last.ckpt")
            loaded = model.load_from_checkpoint(work / "last.ckpt")  # as TEACH's sample_seq.py does
            loaded.eval()
            with torch.no_grad():
                motion = loaded.forward_seq(["walk forward", "jump", "sit down"], [12, 8, 10])
            print("sequence from the reloaded model:", tuple(motion.shape))
        print(f"text model calls: {ag.text_model_calls}; cache hits: {ag.cache.hits}")
        ag.close()


if __name__ == "__main__":
    main()
