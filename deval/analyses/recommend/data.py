"""MovieLens data: MovieLens-1M (`::`-separated, latin-1) or ml-latest-small (CSV), detected from the files present.

Malformed input is a one-line ConfigError naming the file and line; a rating that names a movie the catalogue
lacks, or a repeated (user, movie) rating, is skipped and counted (Dataset.skipped), never silently used.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from deval.errors import ConfigError

LAYOUTS = {"ml-1m": ("movies.dat", "ratings.dat"), "ml-latest-small": ("movies.csv", "ratings.csv")}
MOVIE_FIELDS = "MovieID::Title::Genres"
RATING_FIELDS = "UserID::MovieID::Rating::Timestamp"
CSV_MOVIES = ["movieId", "title", "genres"]
CSV_RATINGS = ["userId", "movieId", "rating", "timestamp"]


@dataclass(frozen=True)
class Movie:
    id: int
    title: str  # as MovieLens writes it: "Matrix, The (1999)"
    genres: str


@dataclass(frozen=True)
class Rating:
    user: int
    movie: int
    rating: float
    timestamp: int


@dataclass(frozen=True)
class Dataset:
    """A catalogue and its ratings, with what loading skipped or repaired (reported, never silent)."""

    layout: str
    movies: dict[int, Movie]
    ratings: tuple[Rating, ...]
    skipped: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    fingerprint: str = ""

    def popularity(self) -> dict[int, int]:
        """Ratings per catalogue movie (0 for a movie nobody rated)."""
        counts = {m: 0 for m in self.movies}
        for r in self.ratings:
            counts[r.movie] += 1
        return counts


def detect_layout(directory: Path) -> str:
    """ml-1m when movies.dat is present, ml-latest-small when movies.csv is; a one-line error otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--data {directory} is not a directory; pass the folder holding movies.dat and "
                          f"ratings.dat (MovieLens-1M) or movies.csv and ratings.csv (ml-latest-small)")
    for layout, (movies, ratings) in LAYOUTS.items():
        if (directory / movies).exists():
            if not (directory / ratings).exists():
                raise ConfigError(f"{directory / ratings} is missing ({layout} layout: {movies} and {ratings})")
            return layout
    raise ConfigError(f"{directory} holds neither movies.dat (MovieLens-1M) nor movies.csv (ml-latest-small); "
                      f"pass the folder that does with --data")


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the data files, so a resumed run can check it reads the same data."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def load(directory: Path) -> Dataset:
    """The dataset in `directory`, in whichever layout its files have."""
    directory = Path(directory)
    layout = detect_layout(directory)
    movies_file, ratings_file = (directory / f for f in LAYOUTS[layout])
    if layout == "ml-1m":
        movies, notes = _dat_movies(movies_file)
        rows = _dat_ratings(ratings_file)
    else:
        movies, notes = _csv_movies(movies_file), []
        rows = _csv_ratings(ratings_file)
    ratings, skipped = _keep_known(rows, movies, ratings_file)
    return Dataset(layout=layout, movies=movies, ratings=tuple(ratings), skipped=skipped, notes=tuple(notes),
                   fingerprint=fingerprint([movies_file, ratings_file]))


def _lines(path: Path, encoding: str) -> list[str]:
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not {encoding} text (byte {exc.start}); MovieLens-1M files are latin-1, "
                          f"ml-latest-small files UTF-8") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise ConfigError(f"{path} is empty; pass a complete MovieLens copy with --data")
    return lines


def _separator_hint(path: Path, n: int, line: str) -> str:
    found = next((name for sep, name in ((",", "','"), ("\t", "a tab"), ("|", "'|'")) if sep in line), None)
    return (f"{path}: line {n}: no '::' separator{f' (found {found})' if found else ''}; MovieLens-1M files are "
            f"'::'-separated (the CSV layout is movies.csv and ratings.csv)")


def _dat_movies(path: Path) -> tuple[dict[int, Movie], list[str]]:
    movies: dict[int, Movie] = {}
    inner = []
    for n, line in enumerate(_lines(path, "latin-1"), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) == 1:
            raise ConfigError(_separator_hint(path, n, line))
        if len(parts) < 3:
            raise ConfigError(f"{path}: line {n}: expected {MOVIE_FIELDS}, got {len(parts)} fields")
        genres = parts[-1].strip()
        if not genres or (genres != "(no genres listed)" and (" " in genres or "(" in genres)):
            raise ConfigError(f"{path}: line {n}: the last field '{genres[:40]}' is not a genre list; expected "
                              f"{MOVIE_FIELDS}")
        title = "::".join(parts[1:-1]).strip()  # a '::' inside a title: id first and genres last are unambiguous
        if len(parts) > 3:
            inner.append(n)
        movie_id = _int(parts[0], path, n, "MovieID")
        if movie_id in movies:
            raise ConfigError(f"{path}: line {n}: MovieID {movie_id} appears twice (first as "
                              f"'{movies[movie_id].title}')")
        if not title:
            raise ConfigError(f"{path}: line {n}: empty title")
        movies[movie_id] = Movie(movie_id, title, genres)
    where = ", ".join(map(str, inner[:5])) + (", ..." if len(inner) > 5 else "")
    notes = [f"{path.name}: {len(inner)} title(s) contain '::' and were read with the id first and the genres last "
             f"(line{'s' if len(inner) > 1 else ''} {where})"] if inner else []
    return movies, notes


def _dat_ratings(path: Path) -> list[tuple[int, Rating]]:
    rows = []
    for n, line in enumerate(_lines(path, "latin-1"), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) == 1:
            raise ConfigError(_separator_hint(path, n, line))
        if len(parts) != 4:
            raise ConfigError(f"{path}: line {n}: expected {RATING_FIELDS}, got {len(parts)} fields")
        rows.append((n, _rating(parts, path, n)))
    return rows


def _csv_rows(path: Path, header: list[str]) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO("\n".join(_lines(path, "utf-8-sig"))))
    first = next(reader)
    if [h.strip() for h in first] != header:
        raise ConfigError(f"{path}: line 1: expected the header {','.join(header)}, got {','.join(first)[:80]}")
    rows = []
    for row in reader:
        n = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise ConfigError(f"{path}: line {n}: expected {len(header)} comma-separated fields "
                              f"({','.join(header)}), got {len(row)}")
        rows.append((n, row))
    return rows


def _csv_movies(path: Path) -> dict[int, Movie]:
    movies: dict[int, Movie] = {}
    for n, row in _csv_rows(path, CSV_MOVIES):
        movie_id = _int(row[0], path, n, "movieId")
        if movie_id in movies:
            raise ConfigError(f"{path}: line {n}: movieId {movie_id} appears twice")
        if not row[1].strip():
            raise ConfigError(f"{path}: line {n}: empty title")
        movies[movie_id] = Movie(movie_id, row[1].strip(), row[2].strip())
    return movies


def _csv_ratings(path: Path) -> list[tuple[int, Rating]]:
    return [(n, _rating(row, path, n)) for n, row in _csv_rows(path, CSV_RATINGS)]


def _int(text: str, path: Path, n: int, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{path}: line {n}: {name} '{text.strip()[:30]}' is not an integer") from None


def _rating(parts: list[str], path: Path, n: int) -> Rating:
    user, movie = _int(parts[0], path, n, "user id"), _int(parts[1], path, n, "movie id")
    try:
        value = float(parts[2])
    except ValueError:
        raise ConfigError(f"{path}: line {n}: rating '{parts[2].strip()[:30]}' is not a number") from None
    if not 0 <= value <= 5:
        raise ConfigError(f"{path}: line {n}: rating {value:g} is outside 0..5")
    return Rating(user, movie, value, _int(parts[3], path, n, "timestamp"))


def _keep_known(rows: list[tuple[int, Rating]], movies: dict[int, Movie], path: Path):
    """Ratings of catalogue movies, the first of each (user, movie); the rest counted by reason."""
    kept, seen = [], set()
    skipped = {"ratings of unknown movies": 0, "repeated (user, movie) ratings": 0}
    for _, r in rows:
        if r.movie not in movies:
            skipped["ratings of unknown movies"] += 1
        elif (r.user, r.movie) in seen:
            skipped["repeated (user, movie) ratings"] += 1
        else:
            seen.add((r.user, r.movie))
            kept.append(r)
    if not kept:
        raise ConfigError(f"{path}: no rating names a movie of the catalogue; check that movies and ratings "
                          f"come from the same MovieLens release")
    return kept, {k: v for k, v in skipped.items() if v}
