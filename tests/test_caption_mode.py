"""Text budgets: long descriptions split into sentences (CLIP) and caption mode (trim) for frozen checkpoints."""
import pytest
import torch

pytest.importorskip("transformers")
from standins import require_clip_vocabulary  # noqa: E402

require_clip_vocabulary()

from actiongpt_plugin import ActionGPT  # noqa: E402
from actiongpt_plugin.adapters.motionclip import clip_tokenizer  # noqa: E402
from actiongpt_plugin.adapters.textbudget import TextBudget  # noqa: E402
from actiongpt_plugin.config import load_config  # noqa: E402
from actiongpt_plugin.errors import ActionGPTError  # noqa: E402
from standins import ScriptedExpander, clip  # noqa: E402
from standins.mdm import make_mdm  # noqa: E402
from standins.motionclip import make_motionclip, text_to_clip_features  # noqa: E402

FIRST = "a person bends both knees and jumps up."  # 10 CLIP tokens
SECOND = ("then the person lands softly on both feet, raising both arms high above the head, and claps the hands "
          "together twice while turning slowly to the left.")  # 31 tokens
THIRD = "finally the person walks forward."
LONG = f"{FIRST} {SECOND} {THIRD}"


def n_tokens(text):
    return len(clip_tokenizer(clip).encode(text))


def budget(tokens=20, mode="split", **keys):
    return TextBudget(load_config(**{"embedding.long_text": mode, **keys}), tokens, n_tokens, "clip")


def norm_mean(parts):
    mean = parts.mean(0)
    return mean * parts.norm(dim=1).mean() / mean.norm()


def test_pieces_are_whole_sentences_within_the_budget():
    assert n_tokens(LONG) > 40 and n_tokens(SECOND) > 20
    pieces = budget(20).pieces(LONG)
    assert all(n_tokens(p) <= 20 for p in pieces) and " ".join(pieces) == LONG
    assert pieces[0] == FIRST and pieces[-1] == THIRD  # sentences that fit stay whole
    # The over-long second sentence is cut at its comma, then between words.
    assert pieces[1].startswith("then the person lands softly on both feet,")
    assert budget(20).fit(LONG) == FIRST
    assert budget(75).pieces(LONG) == [LONG] and budget(20).pieces(FIRST) == [FIRST]
    assert budget(3).pieces("supercalifragilisticexpialidocious") == ["supercalifragilisticexpialidocious"]


def test_text_within_budget_is_encoded_as_before():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.stack([torch.full((4,), float(len(t))) for t in texts])

    short = [FIRST, THIRD]
    for mode in ("split", "trim", "truncate"):
        assert torch.equal(budget(20, mode).encode(short, encode), encode(short))
    assert calls[0] == short


def test_bad_values_are_one_line_errors():
    with pytest.raises(ActionGPTError, match="embedding.long_text.*split, trim, truncate"):
        budget(20, "cut")
    with pytest.raises(ActionGPTError, match="embedding.text_budget"):
        budget(20, "split", **{"embedding.text_budget": 0})
    with pytest.raises(ActionGPTError, match="embedding.long_text"):
        ActionGPT(make_motionclip(), expander=ScriptedExpander(), **{"embedding.long_text": "chop"})


def test_mdm_caption_mode_sees_whole_sentences_within_20_tokens():
    model = make_mdm(dataset="humanml")
    table = {"jump": [LONG, FIRST, f"{THIRD} {FIRST}", SECOND]}
    with ActionGPT(model, expander=ScriptedExpander(table=table), template="caption",
                   **{"embedding.long_text": "trim"}) as ag:
        assert ag.adapter.text_budget.tokens == 20
        out = model.encode_text(["jump"])[0, 0]
        seen = [ag.adapter.text_budget.fit(d) for d in table["jump"]]
    assert seen[:3] == [FIRST, FIRST, f"{THIRD} {FIRST}"] and n_tokens(seen[3]) <= 20
    assert torch.allclose(out, model.clip_encode_text(seen)[0].mean(0), atol=1e-4)
    with ActionGPT(model, expander=ScriptedExpander(table=table), **{"embedding.long_text": "truncate"}):
        cut = model.encode_text(["jump"])[0, 0]  # MDM's own cut: mid-sentence at 20 tokens
    assert torch.allclose(cut, model.clip_encode_text(table["jump"])[0].mean(0), atol=1e-4)
    assert not torch.allclose(out, cut, atol=1e-3)


def test_mdm_split_aggregates_every_piece():
    model = make_mdm(dataset="humanml")
    with ActionGPT(model, expander=ScriptedExpander(table={"jump": [LONG, FIRST]})) as ag:  # split: the default
        out = model.encode_text(["jump"])[0, 0]
        pieces = ag.adapter.text_budget.pieces(LONG)
    assert len(pieces) >= 3
    per_description = torch.stack([norm_mean(model.clip_encode_text(pieces)[0]), model.clip_encode_text([FIRST])[0, 0]])
    assert torch.allclose(out, per_description.mean(0), atol=1e-4)


def test_mdm_outside_humanml_has_clips_own_budget():
    with ActionGPT(make_mdm(dataset="humanact12"), expander=ScriptedExpander()) as ag:
        assert ag.adapter.text_budget.tokens == 75


def test_motionclip_long_descriptions_split_instead_of_truncated():
    model = make_motionclip()
    real = model.clip_model
    long = " ".join([f"{FIRST} {SECOND}"] * 4)
    assert n_tokens(long) > 100
    with ActionGPT(model, expander=ScriptedExpander(table={"jump": [long] * 2})) as ag:
        out = text_to_clip_features(model, ["jump"])[0, 0]
        pieces = ag.adapter.text_budget.pieces(long)
    assert len(pieces) == 3 and all(n_tokens(p) <= 75 for p in pieces)
    expected = norm_mean(real.encode_text(clip.tokenize(pieces)))
    assert torch.allclose(out, expected, atol=1e-5)
    with ActionGPT(model, expander=ScriptedExpander(table={"jump": [long] * 2}), **{"embedding.long_text": "truncate"}):
        released = text_to_clip_features(model, ["jump"])[0, 0]  # the release: the first 75 tokens
    assert torch.allclose(released, real.encode_text(clip.tokenize([long], truncate=True))[0], atol=1e-5)
    assert not torch.allclose(out, released, atol=1e-3)


def test_text_budget_override_gives_a_77_token_model_captions():
    model = make_motionclip()
    with ActionGPT(model, expander=ScriptedExpander(table={"jump": [LONG] * 4}),
                   **{"embedding.long_text": "trim", "embedding.text_budget": 20}) as ag:
        out = text_to_clip_features(model, ["jump"])[0, 0]
        assert ag.adapter.text_budget.tokens == 20
    assert torch.allclose(out, model.clip_model.encode_text(clip.tokenize([FIRST]))[0], atol=1e-5)
