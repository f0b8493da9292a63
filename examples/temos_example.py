"""Action-GPT with TEMOS: prepare the label vocabulary, train a few steps, sample, uninstall.

    python examples/temos_example.py [--aggregator masked-mean] [--backend embedded]

Runs in seconds with the TEMOS stand-in and a tiny random DistilBERT (no weights, no network);
docs/temos.md shows the same calls with the real TEMOS code.
"""
from _common import ANNOTATIONS, actiongpt_config, arguments, workdir

import torch  # noqa: E402

from actiongpt_plugin import ActionGPT  # noqa: E402
from standins import tiny_distilbert  # noqa: E402
from standins.temos import make_temos  # noqa: E402


def main():
    args = arguments(__doc__.splitlines()[0])
    with workdir("actiongpt-temos-") as work:
        model = make_temos(tiny_distilbert(work / "deps" / "distilbert-base-uncased"))
        labels = list(ANNOTATIONS)
        before = model.state_dict()

        ag = ActionGPT(model, **actiongpt_config(args, work))
        ag.prepare(labels)  # expand + embed every label once; training then never runs DistilBERT for them
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=7e-5)
        with ag:  # install on model.textencoder; uninstalled on exit
            model.train()
            for step in range(args.steps):
                batch = {"text": labels[:2] if step % 2 else labels[2:], "length": [12, 10],
                         "features": torch.randn(2, 12, 6)}
                loss = model.training_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                print(f"step {step}: loss {loss.item():.4f}")
            model.eval()
            with torch.no_grad():
                motions = model({"text": ["jump", "wave"], "length": [20, 15]})
            print("sampled motions:", [tuple(m.shape) for m in motions])
            features, mask = ag.text_encoder(["jump"], return_mask=True)
            print(f"'jump' -> {tuple(features.shape)} token features from {len(ag.descriptions['jump'])} descriptions")
        assert list(model.state_dict()) == list(before), "the plugin adds no parameters"
        print(f"text model calls: {ag.text_model_calls}; cache hits: {ag.cache.hits}; state_dict keys unchanged")
        ag.close()


if __name__ == "__main__":
    main()
