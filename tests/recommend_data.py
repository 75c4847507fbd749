"""A hand-built MovieLens-1M folder whose recommendation metrics are known exactly (tests/test_recommend_*.py)."""

from pathlib import Path

MOVIES = {1: "Matrix, The (1999)", 2: "Toy Story (1995)", 3: "Alien (1979)", 4: "Aliens (1986)", 5: "Big (1988)",
          6: "Heat (1995)", 7: "Fargo (1996)"}
# user, movie, rating, timestamp. User 1: liked 1, 2 then held-out 3 (5 seen, rated 2; 6 comes after).
# User 2: 7 seen (rated 3), liked 2, 3, then held-out 4.
RATINGS = [(1, 1, 5, 100), (1, 2, 4, 200), (1, 5, 2, 300), (1, 3, 5, 400), (1, 6, 1, 500),
           (2, 7, 3, 50), (2, 2, 4, 100), (2, 3, 4, 200), (2, 4, 5, 300)]
COMPLETIONS = [
    (1, 0, "1. Alien (1979)\n2. The Matrix\n3. Dune (1984)"),          # hit; Matrix seen; Dune not in catalogue
    (1, 1, "Here are three:\n1. Heat\n2. Big\n3. Aliens"),              # no hit; Big seen
    (2, 0, "- Toy Story\n- Foo Bar (2001)"),                            # no hit; Toy Story seen; Foo Bar invented
    (2, 1, "1. Alien (1979)\n2. Heat (1995)\n3. alien\n4. Aliens (1986)"),  # 4th cut (k=3): no hit; Alien seen x2
]
# Per user (history 2, k 3): hit, can-hit, hallucination, repeat, distinct, distinct share
EXPECTED_USERS = {
    1: {"hit": 0.5, "can_hit": 1.0, "hallucination": 1 / 6, "repeat": 2 / 6, "distinct": 5.0, "distinct_ratio": 1.0},
    2: {"hit": 0.0, "can_hit": 0.0, "hallucination": 1 / 5, "repeat": 3 / 5, "distinct": 3.0,
        "distinct_ratio": 3 / 4},
}
# ratings per movie: 2 and 3 twice (ranks 1.5 of 7), the other five once (rank 5 of 7)
EXPECTED_POPULARITY = {1: (1.5 + 4 * 5) / 7 / 5, 2: (1.5 + 1.5 + 5 + 1.5) / 7 / 4}
EXPECTED_COVERAGE = 6 / 7  # every movie but Fargo was recommended


def write(directory: Path, movies=None, ratings=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    movies = MOVIES if movies is None else movies
    ratings = RATINGS if ratings is None else ratings
    (directory / "movies.dat").write_bytes("".join(f"{m}::{t}::Drama\n" for m, t in movies.items())
                                           .encode("latin-1"))
    (directory / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings))
    return directory


def write_completions(path: Path, rows=None) -> Path:
    import json

    rows = COMPLETIONS if rows is None else rows
    path.write_text("".join(json.dumps({"user": u, "sample": s, "text": t}) + "\n" for u, s, t in rows))
    return path
