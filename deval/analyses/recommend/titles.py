"""Movie titles: MovieLens spelling to display form, answer text to a list of titles, titles to catalogue ids.

Matching (our reconstruction; docs/recommend.md): both sides are normalised (accents dropped, case folded,
punctuation to spaces, '&' -> 'and', a leading article dropped whether written first or MovieLens-style last,
roman numerals ii..xx read as numbers). A normalised title equal to a catalogue key matches; otherwise the
closest key by optimal-string-alignment distance (rapidfuzz) matches when it is within one edit per
CHARS_PER_EDIT characters, unique, and has the same numbers (so "Toy Story 3" never becomes "Toy Story 2").
A year, when the answer gives one, must be within YEAR_SLACK of the catalogue's.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from deval.errors import ConfigError

ARTICLES = ("the", "a", "an", "les", "la", "le", "l'", "il", "das", "der", "die", "el", "los", "las", "det", "den")
ENGLISH_ARTICLES = ("the", "a", "an")  # dropped from the front of a key (other languages' are kept: "Die Hard")
YEAR = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
LOOSE_YEAR = re.compile(r"\s*[:,\-–]\s*(\d{4})\s*$")
TRAILING_ARTICLE = re.compile(r",\s*(" + "|".join(re.escape(a) for a in ARTICLES) + r")\s*$", re.IGNORECASE)
LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}\s*[.):\]]|[-*•·]|#\d{1,3}|\(\d{1,3}\))\s*")
ROMAN = {r: str(i) for i, r in enumerate(
    ["", "i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii", "xiii", "xiv", "xv", "xvi",
     "xvii", "xviii", "xix", "xx"]) if i >= 2}
CHARS_PER_EDIT = 6  # a fuzzy match may differ by one edit per this many characters of the answer's title
YEAR_SLACK = 1  # a stated year may be this far from the catalogue's (release dates differ by country)


def _fold(text: str) -> str:
    """Accents dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def split_year(title: str) -> tuple[str, int | None]:
    """'Matrix, The (1999)' -> ('Matrix, The', 1999); also 'Rocky II: 1979' or 'Heat - 1995' (a year after a
    colon, comma or dash); no trailing year -> (title, None)."""
    m = YEAR.search(title) or LOOSE_YEAR.search(title)
    if not m or not 1880 <= int(m.group(1)) <= 2100:
        return title.strip(), None
    return title[:m.start()].strip(), int(m.group(1))


def _parts(title: str) -> list[str]:
    """A MovieLens title without its year and its alternative titles in parentheses: 'Seven (Se7en)' -> both."""
    alts = re.findall(r"\(([^()]*)\)", title)
    main = re.sub(r"\s*\([^()]*\)", "", title).strip()
    head = unarticle(main).split(":")[0]  # 'Terminator 2: Judgment Day' is also 'Terminator 2'
    short = [head] if ":" in main and len(head.split()) >= 2 else []
    return [p for p in [main, *alts, *short] if p.strip()]


def unarticle(title: str) -> str:
    """'Matrix, The' -> 'The Matrix' (MovieLens moves a leading article to the end)."""
    m = TRAILING_ARTICLE.search(title)
    if not m:
        return title
    article = m.group(1)
    return f"{article}{'' if article.endswith(chr(39)) else ' '}{title[:m.start()].strip()}"


def display(title: str) -> str:
    """A MovieLens title as people write it: 'Matrix, The (1999)' -> 'The Matrix (1999)'."""
    body, year = split_year(title)
    alts = re.findall(r"\s*\([^()]*\)", body)
    main = re.sub(r"\s*\([^()]*\)", "", body).strip()
    return unarticle(main) + "".join(alts) + (f" ({year})" if year is not None else "")


def key(title: str) -> str:
    """The comparison key of one title without year: folded, articles dropped, punctuation spaced, numbers read."""
    text = _fold(unarticle(title.strip()))
    text = text.replace("&", " and ")
    text = re.sub(r"[^\w\s]|_", " ", text.replace("'", ""))
    words = text.split()
    if len(words) > 1 and words[0] in ENGLISH_ARTICLES:
        words = words[1:]
    return " ".join(ROMAN.get(w, w) for w in words)


def _numbers(k: str) -> tuple[str, ...]:
    return tuple(w for w in k.split() if w.isdigit())


def require_rapidfuzz() -> None:
    """Title matching needs rapidfuzz (the 'recommend' extra); a one-line error naming the fix otherwise."""
    try:
        import rapidfuzz  # noqa: F401
    except ImportError:
        raise ConfigError("deval recommend matches titles with rapidfuzz: pip install 'deval[recommend]'") from None


@dataclass(frozen=True)
class Match:
    """One recommended title: the text, the catalogue id it matched (None: not in the catalogue) and how."""

    text: str
    movie: int | None
    how: str  # exact | fuzzy | none | ambiguous | year


class Catalogue:
    """Catalogue titles indexed by key for matching (every alternative title of a movie is a key too)."""

    def __init__(self, titles: dict[int, str], popularity: dict[int, int] | None = None):
        require_rapidfuzz()
        self.titles = dict(titles)
        self.popularity = popularity or {}
        self.by_key: dict[str, list[tuple[int, int | None]]] = {}
        for movie, title in self.titles.items():
            body, year = split_year(title)
            for part in _parts(body):
                k = key(part)
                if k:
                    self.by_key.setdefault(k, []).append((movie, year))
        self.keys = list(self.by_key)
        self._memo: dict[str, Match] = {}  # answers repeat titles often; fuzzy search is the costly part

    def match(self, text: str) -> Match:
        """The catalogue movie a recommended title names, or why none."""
        if text not in self._memo:
            self._memo[text] = self._match(text)
        return self._memo[text]

    def _match(self, text: str) -> Match:
        body, year = split_year(text.strip().strip("\"'“”*_ ").strip())
        k = key(body.strip("\"'“”*_ "))
        if not k:
            return Match(text, None, "none")
        if k in self.by_key:
            return self._pick(text, self.by_key[k], year, "exact")
        from rapidfuzz import process
        from rapidfuzz.distance import OSA

        allowed = len(k) // CHARS_PER_EDIT
        if allowed == 0:
            return Match(text, None, "none")
        found = process.extract(k, self.keys, scorer=OSA.distance, score_cutoff=allowed, limit=None)
        found = [(cand, dist) for cand, dist, _ in found if _numbers(cand) == _numbers(k)]
        if not found:
            return Match(text, None, "none")
        best = min(d for _, d in found)
        nearest = [c for c, d in found if d == best]
        candidates = [x for c in nearest for x in self.by_key[c]]
        if len({m for m, _ in candidates}) > 1 and len(nearest) > 1:
            fitting = [x for x in candidates if year is not None and x[1] is not None
                       and abs(x[1] - year) <= YEAR_SLACK]
            if len({m for m, _ in fitting}) != 1:
                return Match(text, None, "ambiguous")
            candidates = fitting
        return self._pick(text, candidates, year, "fuzzy")

    def _pick(self, text: str, candidates: list[tuple[int, int | None]], year: int | None, how: str) -> Match:
        """Among movies sharing a key: the one whose year fits, else (no year given) the most rated one."""
        if year is not None:
            fitting = [(m, y) for m, y in candidates if y is None or abs(y - year) <= YEAR_SLACK]
            if not fitting:
                return Match(text, None, "year")
            candidates = sorted(fitting, key=lambda x: (abs((x[1] or year) - year), x[0]))
            return Match(text, candidates[0][0], how)
        best = max(candidates, key=lambda x: (self.popularity.get(x[0], 0), -x[0]))
        return Match(text, best[0], how)


def parse_list(text: str, k: int) -> tuple[list[str], int]:
    """The first k recommended titles in an answer, and how many more it gave (cut off).

    Our reconstruction: when some lines carry list markers ('1.', '2)', '-', '*'), only those lines are titles;
    otherwise every non-empty line is. A title is cut after its year '(1999)' when it has one (dropping a
    description after it); a year cut off by max_tokens ('(1999', '(19') is completed or dropped; headings ending
    in ':' are not titles.
    """
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    marked = [line for line in lines if LIST_MARKER.match(line)]
    chosen = marked if marked else lines
    titles = []
    for line in chosen:
        line = LIST_MARKER.sub("", line, count=1).replace("**", "").replace("__", "").strip()
        m = re.search(r"\(\d{4}\)", line)
        dangling = re.search(r"\s*\((\d{0,4})$", line)  # an answer cut off by max_tokens inside the year
        if m:
            line = line[:m.end()]
        elif dangling:
            year = dangling.group(1)
            line = line[:dangling.start()] + (f" ({year})" if len(year) == 4 else "")
        elif line.endswith(":"):
            continue
        line = line.strip(" \"'“”.,;").strip()
        if line:
            titles.append(line)
    return titles[:k], max(0, len(titles) - k)
