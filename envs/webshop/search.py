"""The shop's search engine: BM25 over the products' index texts, cached on disk.

The original WebShop searches a pyserini (Lucene) index. This is ``bm25s`` configured like Lucene's
default English analysis and scoring: method "lucene", k1 = 0.9, b = 0.4 (pyserini's defaults),
possessive "'s" removed, Lucene's 33 English stop words, Porter stemming (PyStemmer's "porter" is the
original algorithm, as in Lucene's PorterStemFilter). On the shared 100 products it ranks the same
top-5 as pyserini. Ties keep catalogue order, as Lucene's doc-id order does.

The index is built once per catalogue and saved under ``agentgym.paths.data_dir("webshop", "bm25",
<catalogue fingerprint>)``; later loads read it back instead of re-tokenising the catalogue.

>>> index = SearchIndex.build(["red running shoe", "blue hat", "shoe rack"], ["A1", "A2", "A3"])
>>> index.search("running shoes")
['A1', 'A3']
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["SearchIndex", "tokenize", "LUCENE_ENGLISH_STOP_WORDS", "BM25_PARAMS", "INDEX_FORMAT"]

# org.apache.lucene.analysis.en.EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
LUCENE_ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split())
BM25_PARAMS = {"method": "lucene", "k1": 0.9, "b": 0.4}
INDEX_FORMAT = "agentgym-webshop-bm25-v1"  # part of the cache key: bump when tokenisation changes

_POSSESSIVE = re.compile(r"['’]s\b")
_TOKEN = re.compile(r"\w+")
_stemmer_lock = threading.Lock()
_stemmer = None


def _stem_words(words: list[str]) -> list[str]:
    global _stemmer
    with _stemmer_lock:  # PyStemmer objects are not thread-safe
        if _stemmer is None:
            import Stemmer

            _stemmer = Stemmer.Stemmer("porter")
        return _stemmer.stemWords(words)


def tokenize(text: str) -> list[str]:
    """Lucene-like English analysis: lower-case, drop possessive 's, word tokens, stop words, Porter."""
    words = [w for w in _TOKEN.findall(_POSSESSIVE.sub("", text.lower())) if w not in LUCENE_ENGLISH_STOP_WORDS]
    return _stem_words(words) if words else []


class SearchIndex:
    """BM25 retrieval over a fixed list of documents identified by ``ids``."""

    def __init__(self, retriever, ids: Sequence[str]):
        self._retriever = retriever
        self.ids = list(ids)
        self._vocab = retriever.vocab_dict

    @classmethod
    def build(cls, texts: Sequence[str], ids: Sequence[str]) -> "SearchIndex":
        import bm25s

        if len(texts) != len(ids):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        retriever = bm25s.BM25(**BM25_PARAMS)
        retriever.index([tokenize(t) for t in texts], show_progress=False)
        return cls(retriever, ids)

    @classmethod
    def load_or_build(cls, texts: Sequence[str], ids: Sequence[str], fingerprint: str,
                      cache_root: Path | None = None) -> "SearchIndex":
        """The cached index for ``fingerprint`` (built and saved on a miss)."""
        import bm25s

        if cache_root is None:
            from agentgym.paths import data_dir

            cache_root = data_dir("webshop", "bm25")
        target = Path(cache_root) / f"{INDEX_FORMAT}-{fingerprint[:32]}"
        if (target / "ids.json").is_file():
            try:
                retriever = bm25s.BM25.load(str(target), show_progress=False)
                with open(target / "ids.json", encoding="utf-8") as f:
                    cached_ids = json.load(f)
                if cached_ids == list(ids):
                    return cls(retriever, cached_ids)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt below
        index = cls.build(texts, ids)
        index.save(target)
        return index

    def save(self, target: Path) -> None:
        """Write the index to ``target`` atomically (a temporary folder renamed into place), so a
        concurrent reader never sees half an index."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            self._retriever.save(str(tmp), show_progress=False)
            with open(tmp / "ids.json", "w", encoding="utf-8") as f:
                json.dump(self.ids, f)
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "ids.json").is_file():
                raise

    def search(self, query: str, k: int = 50) -> list[str]:
        """Ids of up to ``k`` documents with a positive score, best first (ties in index order)."""
        terms = [t for t in tokenize(query) if t in self._vocab]
        if not terms or k <= 0:
            return []
        scores = np.asarray(self._retriever.get_scores(terms))
        positive = np.flatnonzero(scores > 0)
        if positive.size > k:
            # keep every document scoring at least the k-th best, then order exactly
            kth = np.partition(scores[positive], positive.size - k)[positive.size - k]
            positive = positive[scores[positive] >= kth]
        order = positive[np.lexsort((positive, -scores[positive]))][:k]
        return [self.ids[i] for i in order]

    def __len__(self) -> int:
        return len(self.ids)
