"""Description quality with the real all-MiniLM-L6-v2 embedder: relevance, rejection rules, rerank, `score`."""
import json

import pytest

from actiongpt_plugin import Expander, load_config
from actiongpt_plugin import quality
from actiongpt_plugin.cli import main
from actiongpt_plugin.errors import ActionGPTError
from actiongpt_plugin.packs import write_pack

# On-topic descriptions, partly real SmolLM2-135M outputs with the few-shot template.
GOOD_JUMP = [
    "The person bends the knees, swings both arms back, then pushes off the ground with both feet.",
    "The person launches themselves into the air, quickly jumping forward with the right leg.",
    "The person crouches slightly and springs upward with the arms raised above the head.",
    "The person jumps up from both feet, tucks the knees toward the chest and lands softly.",
]
# What small models write instead (real SmolLM2 outputs with the bare release prompt, and their kind).
BAD_JUMP = [
    ("Captain Jaxon Blackwood was a brave sailor who sailed the seven seas in search of adventure.", "name: 'Jaxon'"),
    ("A person performing the action jump is a skilled and experienced martial artist named Akira Kaito.",
     "name: 'Akira'"),
    ("Meet Aria, a professional skydiver. She is fearless and loves to jump from planes.", "name: 'Aria'"),
    ("Once upon a time, a little girl loved to jump over the puddles on her way to school.",
     "story: once upon a time"),
    ('"Watch this!" she shouted, and jumped over the fence.', "story: dialogue"),
    ("I'm glad you asked! When I jump, I bend my knees and push off the ground.", "story: first person"),
    ("She was tired after the game, so she had a rest and decided to jump into the pool.",
     "story: past-tense narrative"),
    ("A person performing the action jump is likely someone who is wearing a leotard.",
     "story: a character (is wearing)"),
]
OFF_TOPIC = "Jumping is a fun activity that people of all ages enjoy."


@pytest.fixture(scope="module")
def minilm():
    return quality.get_embedder()


@pytest.fixture
def qcfg():
    return load_config().quality


# -- rules (no model) ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, reason", BAD_JUMP)
def test_rules_reject_names_and_stories(text, reason):
    assert quality.rule_reason(text, "jump") == reason


@pytest.mark.parametrize("text", GOOD_JUMP + [
    "The person stands in a T-pose, then jumps. Then the person lands on both feet.",
    "**Legs**: The person bends the knees. **Arms**: Both arms swing up.",  # markdown headings are not names
    'The person performs the action "sit down" by bending the knees.',  # a quoted phrase is not dialogue
    "The person does the Macarena, moving each arm in turn.",  # capitalised words of the phrase itself
])
def test_rules_accept_movement_descriptions(text):
    phrase = "do the Macarena" if "Macarena" in text else "jump"
    assert quality.rule_reason(text, phrase) is None


def test_body_groups():
    assert quality.body_groups("The person keeps the back straight and lifts the left knee and both hands.") == [
        "torso", "hands", "legs"]
    assert quality.body_groups("The person steps back and swings the arms back.") == ["arms"]  # "back" is no torso


def test_missing_embedder_is_one_line_error():
    with pytest.raises(ActionGPTError, match="neither a folder nor"):
        quality.embedder_path("no-such-embedder")


# -- the embedder ----------------------------------------------------------------------------------
def test_embedder_reproduces_sentence_transformers(minilm):
    # Reference values of sentence-transformers' all-MiniLM-L6-v2 (mean pooling, normalised).
    v = minilm.encode(["jump", "leap into the air", "sit on a chair"])
    assert v.norm(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert float(v[0] @ v[1]) == pytest.approx(0.74, abs=0.02)
    assert float(v[0] @ v[2]) == pytest.approx(0.24, abs=0.02)
    # Batching sorts by length internally; rows come back in the caller's order.
    alone = minilm.encode(["sit on a chair"])
    assert float(alone[0] @ v[2]) == pytest.approx(1.0, abs=1e-5)


def test_relevance_ranks_the_right_action_first(minilm, qcfg):
    on_topic = [
        "The person waves their hand, palm facing upwards, and then stretches their arm.",  # SmolLM2
        "The person lifts the left hand and waves it.",
    ]
    wrong_action = [
        "The person jumps up and down with their right leg, then holds their left leg.",  # SmolLM2, asked to wave
        "The person bends the knees and kicks forward with the right leg.",
    ]
    (verdicts,) = quality.assess([("wave", on_topic + wrong_action + ["The ocean waves crashed against the rocks."])],
                                 qcfg)
    rel = [v.relevance for v in verdicts]
    assert min(rel[:2]) > max(rel[2:4]) + 0.1
    assert verdicts[4].reason.startswith("off-topic: not about body movement")  # lexically close, no movement


def test_assess_flags_off_topic_and_duplicates(minilm, qcfg):
    texts = [GOOD_JUMP[0], OFF_TOPIC, GOOD_JUMP[0].upper(), BAD_JUMP[0][0]]
    (verdicts,) = quality.assess([("jump", texts)], qcfg)
    assert verdicts[0].reason is None
    assert verdicts[1].reason.startswith("off-topic: not about body movement")
    assert verdicts[2].reason == "duplicate"
    assert verdicts[3].reason == "name: 'Jaxon'"
    strict = load_config(**{"quality.min_relevance": 0.99}).quality
    (verdicts,) = quality.assess([("jump", [GOOD_JUMP[0]])], strict)
    assert verdicts[0].reason.startswith("off-topic: unrelated to 'jump'")


# -- rerank through the expander ---------------------------------------------------------------------
def rerank(**values):
    return Expander(backend="scripted", **{"quality.rerank": True, "expand.oversample": 2.0, **values})


def test_rerank_is_off_by_default():
    assert quality.select_descriptions(phrase="jump", candidates=GOOD_JUMP, k=2, config=load_config()) is None


def test_rerank_keeps_the_most_relevant_and_asks_again_when_short(scripted, minilm, qcfg):
    bad = [t for t, _ in BAD_JUMP]
    first = [bad[0], GOOD_JUMP[0], bad[1], GOOD_JUMP[1], bad[2], GOOD_JUMP[2], bad[3], OFF_TOPIC]  # 3 usable of 8
    scripted.script["jump"] = [first, [bad[4], GOOD_JUMP[3]]]
    out = rerank().expand(["jump"])["jump"]
    # 8 asked (k=4 x oversample 2); one short after rejections: ceil(1 x 2) more asked, not padded.
    assert scripted.calls == [("jump", 8), ("jump", 2)]
    assert sorted(out) == sorted(GOOD_JUMP)
    (verdicts,) = quality.assess([("jump", out)], qcfg)
    assert [v.relevance for v in verdicts] == sorted((v.relevance for v in verdicts), reverse=True)
    # Everything paid for is stored; a rerun selects the same k without a call.
    assert rerank().expand(["jump"])["jump"] == out and len(scripted.calls) == 2
    # The built-in first-k selection over the same stored candidates keeps the junk.
    plain = Expander(backend="scripted", **{"expand.oversample": 2.0}).expand(["jump"])["jump"]
    assert plain == first[:4] and len(scripted.calls) == 2


def test_rerank_reports_a_phrase_it_cannot_fill(scripted, minilm):
    bad = [t for t, _ in BAD_JUMP]
    scripted.script["jump"] = [bad, bad]
    result = rerank(**{"expand.attempts": 1}).run(["jump"])
    assert scripted.calls == [("jump", 8), ("jump", 8)]
    assert result.descriptions == {}
    assert result.stats.failures == {"jump": "only 0 of 4 descriptions accepted by the selector (of 16)"}


# -- actiongpt score -------------------------------------------------------------------------------
WAVE = [
    "The person raises the right arm and moves the open hand from side to side.",
    "The person lifts the left hand to shoulder height and waves it.",
]


@pytest.fixture
def packs(tmp_path):
    good = write_pack(tmp_path / "good.jsonl", [
        {"phrase": "jump", "descriptions": GOOD_JUMP[:1] + GOOD_JUMP[2:3]},
        {"phrase": "wave", "descriptions": WAVE},
    ])
    release = tmp_path / "gpt3_annotations.json"  # the release's format: label -> descriptions
    release.write_text(json.dumps({"jump": [BAD_JUMP[0][0], BAD_JUMP[3][0], BAD_JUMP[5][0], OFF_TOPIC]}))
    return good, release


def cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_score_json(packs, capsys, minilm):
    good, release = packs
    code, out, err = cli(capsys, "score", str(good), str(release), "--json")
    assert code == 0, err
    a, b = json.loads(out)
    assert (a["pack"], a["phrases"], a["descriptions"]) == (str(good), 2, 4)
    # jump: knees+arms+feet, arms+head; wave: arms+hands, hands+arms(shoulder)
    assert a["coverage"] == {"head": 0.25, "torso": 0.0, "arms": 1.0, "hands": 0.5, "legs": 0.25, "feet": 0.25}
    assert a["groups_mean"] == pytest.approx(9 / 4)
    texts = GOOD_JUMP[:1] + GOOD_JUMP[2:3] + WAVE
    assert a["words_mean"] == pytest.approx(sum(len(t.split()) for t in texts) / 4)
    assert a["rejected_rate"] == 0 and a["rejections"] == {}
    assert b["rejected_rate"] == 1.0 and b["rejections"] == {"name": 1, "story": 2, "off-topic": 1}
    assert a["relevance_mean"] > b["relevance_mean"] + 0.1
    assert a["relevance_min"] <= a["relevance_mean"]
    assert "per_phrase" not in a


def test_score_table_and_per_phrase(packs, capsys, minilm):
    good, release = packs
    code, out, _ = cli(capsys, "score", str(good), str(release))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["pack", "phrases", "descr"]
    assert lines[1].split()[:3] == ["good.jsonl", "2", "4"] and lines[1].split()[6] == "0.0%"
    assert lines[2].split()[6] == "100.0%"
    assert "gpt3_annotations.json: rejected story 2, name 1, off-topic 1" in lines
    code, out, _ = cli(capsys, "score", str(release), "--per-phrase")
    assert "  'jump': relevance" in out and "4 rejected" in out
    assert "    - name: 'Jaxon': Captain Jaxon Blackwood" in out
    code, out, _ = cli(capsys, "score", str(good), "--per-phrase", "--json", "--limit", "1")
    (report,) = json.loads(out)
    assert [p["phrase"] for p in report["per_phrase"]] == ["jump"] and report["per_phrase"][0]["rejected"] == []


def test_score_refuses_a_tampered_pack(packs, capsys):
    good, _ = packs
    with open(good, "a") as f:
        f.write('{"phrase": "x", "descriptions": ["a b c"]}\n')
    code, _, err = cli(capsys, "score", str(good))
    assert code == 2 and err.strip().startswith("actiongpt: error:") and "does not match its manifest" in err
