"""concepts.py: noun extraction (singulars, compounds, what is dropped), the concept pool, backends, cache."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from regionclip_min import concepts
from regionclip_min.concepts import build_concept_pool, noun_phrases

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "hexagon", "crescent", "ring"]
TOY_CAPTIONS = [
    "a photo of two red circles and a star",
    "A green heart on a noisy background.",
    "three crosses",
    "An image of a blue square, two orange rings and a purple diamond.",
    "a picture showing a yellow triangle next to some hexagons",
    "A simple drawing of two crescents against a textured background.",
    "four stars, a cross and a heart in this image",
    "One large ring.",
]


@pytest.mark.parametrize("caption,expected", [
    ("a photo of two circles", ["photo", "circle"]),
    ("three crosses", ["cross"]),
    ("Two boxes of donuts sit on the counter.", ["box", "donut", "counter"]),
    ("Knives, forks and spoons on a napkin.", ["knife", "fork", "spoon", "napkin"]),
    ("A couple of buses parked on the street.", ["couple", "bus", "street"]),
    ("Wine glasses lined up on a bar.", ["wine glass", "bar"]),
    ("Three men and two children watch the geese.", ["man", "child", "goose"]),
    ("Several people standing in a field.", ["person", "field"]),
    ("A pair of scissors on a table.", ["pair", "scissors", "table"]),
])
def test_plurals_come_out_singular(caption, expected):
    assert noun_phrases(caption) == expected


def test_colours_determiners_numbers_and_verbs_are_dropped():
    assert noun_phrases("Two red circles and a blue star on a noisy background.") == ["circle", "star", "background"]
    assert noun_phrases("A big orange ring.") == ["ring"]  # "orange" the colour, not the fruit
    assert noun_phrases("a red and blue kite") == ["kite"]
    assert noun_phrases("A red, white and blue train.") == ["train"]
    assert noun_phrases("A man flies a kite on the beach.") == ["man", "kite", "beach"]
    assert noun_phrases("A woman cuts a cake with a knife.") == ["woman", "cake", "knife"]
    assert noun_phrases("A man riding a wave on top of a surfboard.") == ["man", "wave", "surfboard"]


def test_complex_prepositions_hold_no_concept():
    tagged = [("A", "DT"), ("dog", "NN"), ("in", "IN"), ("front", "NN"), ("of", "IN"), ("a", "DT"), ("door", "NN")]
    assert [t for _, t in concepts._complex_prepositions(tagged)] == ["DT", "NN", "IN", "IN", "IN", "DT", "NN"]
    assert noun_phrases("A toddler brushing his teeth in front of a mirror.") == ["toddler", "tooth", "mirror"]


def test_compounds_order_and_uniqueness():
    assert noun_phrases("A fire hydrant next to a traffic light.") == ["fire hydrant", "traffic light"]
    assert noun_phrases("A dog chases a dog. The dog wins!") == ["dog"]  # an ordered set, across sentences
    assert noun_phrases("A LARGE BROWN DOG LYING ON A BED.") == ["dog", "bed"]  # all caps is not a name


def test_empty_and_conceptless_captions():
    assert noun_phrases("") == []
    assert noun_phrases("   \n") == []
    assert noun_phrases("...") == []
    assert noun_phrases("It is red and blue.") == []
    with pytest.raises(TypeError):
        noun_phrases(None)


def test_toy_pool_is_shape_names_plus_filler_nouns():
    pool = build_concept_pool(TOY_CAPTIONS)
    assert set(pool) == set(SHAPES) | {"photo", "image", "picture", "drawing", "background"}
    assert len(pool) == len(set(pool))


def test_pool_of_the_generated_toy_world(toy_world):
    from regionclip_min import toyworld

    captions = [a["caption"] for a in json.loads(Path(toy_world["captions_train"]).read_text())["annotations"]]
    text = " ".join(captions).lower()
    mentioned = {w for w in toyworld.SHAPES + toyworld.FILLER_NOUNS + ("drawing",)
                 if re.search(rf"\b({w}|{toyworld.plural(w)})\b", text)}
    assert set(build_concept_pool(captions)) == mentioned


def test_pool_ranking_threshold_and_limits():
    captions = ["a dog and a cat", "a dog and a dog", "a cat", "a dog", "a bird", "an apple"]
    # counts: dog 3 (once per caption), cat 2, apple 1, bird 1 (ties alphabetical)
    assert build_concept_pool(captions) == ["dog", "cat", "apple", "bird"]
    assert build_concept_pool(captions, min_count=2) == ["dog", "cat"]
    assert build_concept_pool(captions, max_concepts=3) == ["dog", "cat", "apple"]
    assert build_concept_pool(captions, stop_words=["cat"]) == ["dog", "apple", "bird"]
    assert build_concept_pool(iter(captions)) == build_concept_pool(list(reversed(captions)))
    assert build_concept_pool([]) == []
    with pytest.raises(ValueError):
        build_concept_pool(captions, min_count=0)


def test_pool_shows_a_progress_bar_only_for_long_inputs(capsys):
    build_concept_pool(["a dog"] * 10)
    assert "concept pool" not in capsys.readouterr().err
    assert build_concept_pool(["a dog"] * 1000) == ["dog"]
    assert "concept pool" in capsys.readouterr().err


def test_precision_recall_on_hand_labelled_captions():
    spec = importlib.util.spec_from_file_location("concept_bench", ROOT / "benchmarks" / "concept_extraction.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.load_labelled(ROOT / "tests" / "data" / "concept_captions.tsv")
    assert len(rows) >= 70
    result = bench.score(rows)
    assert result["precision"] >= 0.85 and result["recall"] >= 0.85, result
    held_out = bench.score([r for r in rows if r[0] == "held-out"])
    assert held_out["precision"] >= 0.85 and held_out["recall"] >= 0.85, held_out


@pytest.fixture
def fresh_backend():
    concepts._select_backend.cache_clear()
    yield
    concepts._select_backend.cache_clear()


def test_offline_backend_without_nltk_data(fresh_backend, monkeypatch):
    monkeypatch.setattr(concepts, "_has_nltk_data", lambda resource: False)
    assert concepts.backend() == "offline: textblob-lexicon+rules"
    assert noun_phrases("Two red circles and a blue star.") == ["circle", "star"]


def test_unloadable_nltk_data_falls_back_offline(fresh_backend, monkeypatch, tmp_path):
    import nltk

    if concepts._has_nltk_data(concepts._TAGGER_DATA) or concepts._has_nltk_data(concepts._WORDNET_DATA):
        pytest.skip("real nltk data installed here")
    monkeypatch.setattr(concepts, "_has_nltk_data", lambda resource: True)  # "found", but nothing loads
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    assert concepts.backend() == "offline: textblob-lexicon+rules"
    assert noun_phrases("three crosses") == ["cross"]


@pytest.mark.skipif(not concepts._has_nltk_data(concepts._WORDNET_DATA), reason="no nltk wordnet data")
def test_wordnet_singulars_when_installed(fresh_backend):
    assert concepts.backend().endswith("+wordnet")
    assert noun_phrases("A photo of men, geese, teeth, buses and knives.") == [
        "photo", "man", "goose", "tooth", "bus", "knife"]


@pytest.fixture(scope="module")
def toy_clip():
    clip_model = pytest.importorskip("regionclip_min.clip_model")
    torch.manual_seed(0)
    model, tokenizer = clip_model.load_clip("RN-toy")
    return clip_model, model, tokenizer


def test_concept_embeddings_cache(toy_clip, tmp_path, monkeypatch):
    clip_model, model, tokenizer = toy_clip
    names, templates = ["circle", "traffic light"], ["a photo of a {}.", "{}."]
    emb = concepts.concept_embeddings(model, tokenizer, names, templates, cache_dir=tmp_path, model_key="toy/s0")
    assert emb.shape == (2, 64) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(emb, clip_model.encode_texts(model, tokenizer, names, templates))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".pt")  # no tmp file left behind

    def must_not_encode(*args, **kwargs):
        raise AssertionError("cache miss")
    monkeypatch.setattr(clip_model, "encode_texts", must_not_encode)
    again = concepts.concept_embeddings(model, tokenizer, names, templates, cache_dir=tmp_path, model_key="toy/s0")
    assert torch.equal(again, emb)
    monkeypatch.undo()

    concepts.concept_embeddings(model, tokenizer, names, templates[:1], cache_dir=tmp_path, model_key="toy/s0")
    concepts.concept_embeddings(model, tokenizer, names, templates, cache_dir=tmp_path, model_key="toy/s1")
    assert len(list(tmp_path.iterdir())) == 3  # templates and model key are part of the key
    key = concepts._cache_key
    assert key("m", templates, names) != key("m", templates, names[::-1]) != key("m", templates[:1], names)
    with pytest.raises(ValueError):
        concepts.concept_embeddings(model, tokenizer, [], templates, model_key="toy/s0")


def test_colour_before_a_verb_like_plural_is_not_the_noun():
    # the offline lexicon reads "crosses" as a verb; the colour before it must not become the head noun
    assert noun_phrases("two red crosses and a yellow crescent") == ["cross", "crescent"]
    assert noun_phrases("some yellow crosses") == ["cross"]
    assert noun_phrases("A man crosses the street.") == ["man", "street"]


def test_pool_of_many_toy_captions_is_exactly_shapes_and_fillers():
    """3,000 captions from the toy world's caption generator (no rendering): nothing but shapes and fillers."""
    import numpy as np

    from regionclip_min import toyworld

    rng = np.random.default_rng(0)
    caps = []
    for _ in range(3000):
        n = int(rng.integers(1, 5))
        objs = [(toyworld.SHAPES[rng.integers(12)], list(toyworld.COLORS)[rng.integers(6)]) for _ in range(n)]
        caps.append(toyworld._caption(rng, objs, object_centric=n == 1 and rng.random() < 0.5))
    assert set(build_concept_pool(caps)) == set(toyworld.SHAPES) | set(toyworld.FILLER_NOUNS)
