"""The concept pool: nouns parsed from captions, and their prompt-ensembled text embeddings.

Paper: RegionCLIP (Zhong et al., CVPR 2022, arXiv 2112.09106).
  - Sec. 3.1, "concept pool": the visual concepts are the nouns parsed from the image-text corpus; each
    concept c is turned into prompts ("a photo of a {c}.") and embedded by CLIP's frozen text encoder, l_c.
  - Sec. 4.1, implementation: a concept is kept when it occurs at least 100 times in the captions, which gives
    4,764 concepts on COCO Captions and 6,790 on CC3M.

Pipeline of `noun_phrases` (one caption -> unique singular nouns, in order of first mention):

    tokens = nltk.word_tokenize(sentence, preserve_line=True)   # Treebank rules, needs no nltk data
    tags   = POS tagger (see `backend()`); "on top of" / "in front of" -> prepositions
    chunks = nltk.RegexpParser("NP: {<NN.*>+}")                 # a run of nouns = one (compound) concept
    concept = " ".join(lower-case words), last word singularised if tagged plural

Two backends, chosen once at first use and logged:
  - "nltk-perceptron+wordnet": nltk's averaged perceptron tagger and WordNet lemmatizer, when their data is
    installed (nltk.data.find succeeds and a probe word goes through);
  - "offline: textblob-lexicon+rules": the English lexicon shipped inside the pure-Python `textblob` wheel
    (no download), given context by _lexicon_context, and textblob's rule-based singulariser. Each half
    falls back on its own ("offline: textblob-lexicon+wordnet" when only WordNet is there).
  On the 130 hand-labelled captions of tests/data/concept_captions.tsv the offline backend scores micro
  precision 0.98 / recall 0.98, 0.97 / 0.96 on its 40 held-out ones (benchmarks/concept_extraction.py).

Deliberately left out: the paper's exact parser (it is not described); adjective-noun phrases ("red car" is
"car" here: colours and other attributes are not concepts); lemmatising proper nouns.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import nltk
import torch
import torch.nn.functional as F
from tqdm import tqdm

from regionclip_min.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

_TAGGER_DATA = "taggers/averaged_perceptron_tagger_eng/"
_WORDNET_DATA = "corpora/wordnet"
_NOUN_CHUNKER = nltk.RegexpParser("NP: {<NN|NNS|NNP|NNPS>+}")  # maximal runs of nouns, nothing else
_PLURAL_TAGS = ("NNS", "NNPS")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")  # what a concept word may look like (drops "'s", digits, "--")
# Complex prepositions: their inner nouns are not things in the image ("on top of a surfboard").
_COMPLEX_PREPOSITIONS = (("on", "top", "of"), ("in", "front", "of"))
# Irregular plurals one backend gets wrong (WordNet keeps "people"), and nouns used only in the plural.
_IRREGULAR = {"people": "person"}
_PLURALIA_TANTUM = frozenset({"scissors", "sunglasses", "eyeglasses", "pants", "jeans", "shorts", "trousers",
                              "goggles", "binoculars", "pliers", "tongs", "clothes"})
# Contexts for the lexicon tagger's repairs (_lexicon_context): words that may open a noun phrase, tags that
# may follow its head, forms of "be", and prepositions that double as verb particles ("skis down").
_OPENER = {"DT", "CD", "PRP$", "POS", "JJ", "JJR", "JJS"}
_BOUNDARY = {".", ",", ":", "IN", "TO", "CC", "WDT", "VBZ", "VBP", "VBD", "MD", "RB", "END"}
_BE = {"is", "are", "was", "were", "be", "being", "been", "'s", "'re"}
_AUX = _BE | {"have", "has", "do", "does", "did", "can", "will", "may"}
_PARTICLES = {"down", "up", "out", "off", "away", "toward", "towards", "into", "onto", "across", "along", "back"}
_OBJECT_START = {"DT", "PRP$", "PRP", "RP", "CD", "TO", "JJ", "NN", "NNS"}


def _has_nltk_data(resource: str) -> bool:
    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


def _nltk_tagger():
    """nltk's averaged perceptron tagger, or None when its data is absent or does not load."""
    if not _has_nltk_data(_TAGGER_DATA):
        return None
    try:
        nltk.pos_tag(["a", "dog"])
    except Exception as err:  # found but unreadable: partial download, other nltk version
        log.warning("nltk tagger data found but not loadable (%s); using the offline tagger", err)
        return None
    return nltk.pos_tag


def _wordnet_singular(rules):
    """WordNet's noun lemma, or None when WordNet data is absent or does not load. WordNet lists some
    plurals as lemmas of their own ("men", "teeth"): then the rule-based singular is taken if WordNet knows it."""
    if not _has_nltk_data(_WORDNET_DATA):
        return None
    from nltk.corpus import wordnet

    lemmatize = nltk.stem.WordNetLemmatizer().lemmatize

    def singular(word: str) -> str:
        lemma = lemmatize(word, "n")
        if lemma == word:
            guess = rules(word)
            if guess != word and wordnet.synsets(guess, pos="n"):
                return guess
        return lemma
    try:
        singular("dogs")
    except Exception as err:
        log.warning("nltk wordnet data found but not loadable (%s); using rule-based singulars", err)
        return None
    return singular


@functools.lru_cache(maxsize=1)
def _select_backend():
    """Returns (name, tag(tokens) -> [(word, tag)], singular(word) -> word); logs the choice once."""
    from textblob.en import parser as textblob_parser  # lexicon + suffix rules, bundled in the wheel
    from textblob.en.inflect import singularize as rules

    tagger, tag_name = _nltk_tagger(), "nltk-perceptron"
    if tagger is None:
        def tagger(tokens):
            return _lexicon_context([(w, t) for w, t in textblob_parser.find_tags(tokens)])
        tag_name = "textblob-lexicon"
    singular, sing_name = _wordnet_singular(rules), "wordnet"
    if singular is None:
        singular, sing_name = rules, "rules"
    offline = "" if (tag_name, sing_name) == ("nltk-perceptron", "wordnet") else "offline: "
    name = f"{offline}{tag_name}+{sing_name}"
    log.info("concept extraction backend: %s", name)
    return name, tagger, singular


def backend() -> str:
    """Which tagger + singulariser `noun_phrases` uses, e.g. "nltk-perceptron+wordnet" or
    "offline: textblob-lexicon+rules" (nltk data absent)."""
    return _select_backend()[0]


def _tokenize(caption: str) -> list[list[str]]:
    """Caption -> sentences of tokens. ALL-CAPS captions are lower-cased (taggers read them as names)."""
    if caption.isupper():
        caption = caption.lower()
    sentences = (nltk.word_tokenize(s, preserve_line=True) for s in _SENTENCE_END.split(caption.strip()))
    return [tokens for tokens in sentences if tokens]


def _complex_prepositions(tagged: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Tags the words of "on top of" / "in front of" as IN, whatever the tagger said."""
    words, tags = [w.lower() for w, _ in tagged], [t for _, t in tagged]
    for phrase in _COMPLEX_PREPOSITIONS:
        for i in range(len(words) - len(phrase) + 1):
            if tuple(words[i:i + len(phrase)]) == phrase:
                tags[i:i + len(phrase)] = ["IN"] * len(phrase)
    return [(w, t) for (w, _), t in zip(tagged, tags)]


def _lexicon_context(tagged: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Context for the lexicon tagger, which tags each word alone with its most frequent tag. In order:

    a. be + NN in -ing is a verb:                  "is/VBZ skiing/NN"             -> skiing/VBG
    b. an -ing word between an opener and "of":    "a/DT drawing/VBG of/IN"       -> drawing/NN
    c. a base-form verb (not an auxiliary) after an opener, or after a singular noun and before a boundary,
       is a noun:  "a/DT stop/VB sign/NN" -> stop/NN      "a teddy/NN bear/VB sitting/VBG"  -> bear/NN
    d. a 3rd-person verb or adjective reading between an opener and a phrase boundary is the head noun:
         "three/CD crosses/VBZ ,/,"  -> NNS     "a/DT purple/JJ square/JJ ./."  -> square/NN
         "two/CD red/JJ crosses/VBZ and/CC" -> crosses/NNS, red stays JJ
       ("a red, white and blue kite": and/comma + adjective is no boundary; "very red ." stays JJ);
    e. a plural after the subject's singular noun, before any verb, followed by an object or a particle,
       is the verb:  "a woman/NN cuts/NNS a/DT"  -> cuts/VBZ    "a person skis/NNS down" -> skis/VBZ
    """
    words, tags = [w.lower() for w, _ in tagged], [t for _, t in tagged]
    n = len(tags)
    nxt = lambda i: tags[i + 1] if i + 1 < n else "END"  # noqa: E731
    for i in range(1, n):
        tag, prev = tags[i], tags[i - 1]
        if words[i - 1] in _BE and tag == "NN" and words[i].endswith("ing"):  # a
            tags[i] = "VBG"
        elif prev in _OPENER and tag == "VBG" and i + 1 < n and words[i + 1] == "of":  # b
            tags[i] = "NN"
        elif prev in _OPENER and tag in ("VB", "VBP") and words[i] not in _AUX:  # c
            tags[i] = "NN"
        elif prev in _OPENER and tag in ("VBZ", "JJ"):  # d
            after = nxt(i)
            if after in ("CC", ",") and i + 2 < n and tags[i + 2].startswith("JJ"):
                after = "JJ"
            # "two red crosses and": the 3rd-person verb reading ending the phrase is the plural head, not "red"
            plural_head_next = tag == "JJ" and after == "VBZ" and (tags[i + 2] if i + 2 < n else "END") in _BOUNDARY
            if after in _BOUNDARY and not (tag == "JJ" and prev.startswith("JJ")) and not plural_head_next:
                tags[i] = "NNS" if tag == "VBZ" else "NN"
        elif prev == "NN" and tag in ("VB", "VBP") and words[i] not in _AUX \
                and (nxt(i) in _BOUNDARY or nxt(i).startswith("VB")) \
                and (i + 1 >= n or words[i + 1] not in _PARTICLES):  # c
            tags[i] = "NN"
        elif prev == "NN" and tag == "NNS" and not any(t.startswith(("VB", "MD")) for t in tags[:i]) \
                and (nxt(i) in _OBJECT_START or (i + 1 < n and words[i + 1] in _PARTICLES)):  # e
            tags[i] = "VBZ"
    return [(w, t) for (w, _), t in zip(tagged, tags)]


def _singular(word: str, singular) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    return word if word in _PLURALIA_TANTUM else singular(word)


def noun_phrases(caption: str) -> list[str]:
    """Nouns of one caption (paper Sec. 3.1, the parse that builds the concept pool).

    Args:
        caption: free text, any case; several sentences allowed.
    Returns:
        unique concepts in order of first mention, lower-case, singular; a run of nouns is one compound
        ("traffic light"). Adjectives, colours, numbers, determiners and verbs are dropped. "" -> [].
        E.g. "Two red circles and a blue star on a noisy background." -> ["circle", "star", "background"].
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    _, tagger, singular = _select_backend()
    concepts: dict[str, None] = {}  # an ordered set
    for tokens in _tokenize(caption):
        tree = _NOUN_CHUNKER.parse(_complex_prepositions(tagger(tokens)))
        for chunk in tree.subtrees(lambda t: t.label() == "NP"):
            words = [(w.lower(), t) for w, t in chunk.leaves()]
            words = [(w, t) for w, t in words if _WORD.fullmatch(w)]
            if not words:
                continue
            *head, (last, last_tag) = words
            if last_tag in _PLURAL_TAGS:
                last = _singular(last, singular)
            concepts[" ".join([w for w, _ in head] + [last])] = None
    return list(concepts)


def build_concept_pool(captions: Iterable[str], min_count: int = 1, max_concepts: int | None = None,
                       stop_words: Iterable[str] = ()) -> list[str]:
    """The concept pool (paper Sec. 3.1; Sec. 4.1 uses min_count=100 on COCO Captions -> 4,764 concepts).

    count(c) = number of captions whose noun_phrases contain c;   pool = {c : count(c) >= min_count}
    ranked by count, descending; ties alphabetical, so the pool is a pure function of the captions.

    Args:
        captions: caption strings (a list, or any iterable: a tqdm bar shows for >= 1000 of them).
        min_count: frequency threshold (>= 1).
        max_concepts: keep only the first max_concepts of the ranking (None: all).
        stop_words: concepts to leave out. Empty by default: the paper keeps every frequent noun, filler
            nouns such as "photo" included.
    Returns:
        list of concept strings, most frequent first.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_concepts is not None and max_concepts < 0:
        raise ValueError(f"max_concepts must be >= 0 or None, got {max_concepts}")
    total = len(captions) if isinstance(captions, Sequence) else None
    counts: Counter[str] = Counter()
    for caption in tqdm(captions, total=total, desc="concept pool", unit="caption",
                        disable=total is not None and total < 1000):
        counts.update(noun_phrases(caption))
    stop = set(stop_words)
    ranked = sorted((c for c, n in counts.items() if n >= min_count and c not in stop),
                    key=lambda c: (-counts[c], c))
    return ranked if max_concepts is None else ranked[:max_concepts]


def _cache_key(model_key: str, templates: Sequence[str], concepts: Sequence[str]) -> str:
    blob = json.dumps({"model": model_key, "templates": list(templates), "concepts": list(concepts)})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


@torch.no_grad()
def concept_embeddings(model, tokenizer, concepts: Sequence[str], templates: Sequence[str], *,
                       cache_dir: str | os.PathLike | None = None, model_key: str,
                       batch_size: int = 256) -> torch.Tensor:
    """Text embeddings l_c of the concept pool (paper Sec. 3.1), by prompt ensemble:

        l_c = normalize( mean_t  text_encoder(template_t.format(c)) )     (mean of unnormalised embeddings)

    computed by clip_model.encode_texts and cached on disk, keyed by sha256(model_key, templates, concepts).

    Args:
        model, tokenizer: an open_clip model and its tokenizer (clip_model.load_clip).
        concepts: C concept names; templates: prompt templates with one "{}".
        cache_dir: folder for the cache file (None: no cache). Written atomically (tmp file + os.replace),
            read with torch.load(weights_only=True).
        model_key: names the weights (e.g. "RN50/openai" or a checkpoint path + step); a new key = a new entry.
        batch_size: texts per text-encoder batch.
    Returns:
        (C, D) float32, L2-normalised rows, on CPU; row k is concepts[k].
    """
    concepts, templates = list(concepts), list(templates)
    if not concepts:
        raise ValueError("concept_embeddings needs at least one concept")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"concepts-{_cache_key(model_key, templates, concepts)}.pt"
        if path.exists():
            try:
                entry = load_checkpoint(path)  # weights_only=True: a crafted file runs nothing
            except ValueError as e:
                entry = {}
                log.warning("concept cache %s is unreadable or refused (%s); recomputing", path, e)
            if entry.get("concepts") == concepts and entry.get("templates") == templates:
                return entry["embeddings"]
            if entry:
                log.warning("concept cache %s holds other concepts or templates; recomputing", path)
    from regionclip_min.clip_model import encode_texts  # imported here: the parsing half needs no CLIP

    emb = encode_texts(model, tokenizer, concepts, templates, batch_size=batch_size)  # (C, D)
    emb = F.normalize(emb.detach().float().cpu(), dim=-1).contiguous()  # (C, D)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"embeddings": emb, "concepts": concepts, "templates": templates,
                        "model_key": model_key}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return emb


def read_names(spec: str, option: str = "--vocabulary", *, dedupe: bool = True) -> tuple[list[str], str]:
    """Class names from a text file (one per line) or a comma-separated string: stripped, blank entries dropped,
    case-insensitive duplicates dropped (CLIP's tokenizer lower-cases; the first spelling is kept) unless `dedupe`
    is False (names of the rows of an embedding file, which must stay aligned with them).
    Returns (names, where they came from); SystemExit when nothing is left."""
    path = Path(spec)
    if path.is_file():
        try:
            raw, source = path.read_text(encoding="utf-8").splitlines(), f"{option} file {path}"
        except UnicodeDecodeError as e:
            raise SystemExit(f"{option} file {path} is not UTF-8 text: {e}") from None
    else:
        raw, source = spec.split(","), option
    names, seen = [], set()
    for name in (" ".join(r.split()) for r in raw):  # collapse inner whitespace
        if name and (name.lower() not in seen or not dedupe):
            seen.add(name.lower())
            names.append(name)
    if not names:
        raise SystemExit(f"{source} names no class (it is empty or only blank lines / commas)")
    dropped = sum(1 for r in raw if r.strip()) - len(names)
    if dropped:
        print(f"{source}: {dropped} duplicate name(s) dropped, {len(names)} kept")
    return names, source
