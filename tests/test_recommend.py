"""deval recommend: MovieLens loading (both layouts, bad data), the protocol, and metrics known exactly."""

import numpy as np
import pytest

import recommend_data as hand
from conftest import FIXTURES
from deval.analyses.recommend import data, metrics, protocol
from deval.analyses.recommend.run import RecommendConfig, run_recommend, start
from deval.analyses.recommend.titles import Catalogue
from deval.errors import ConfigError

ML1M, CSV = FIXTURES / "movielens-small", FIXTURES / "movielens-small-csv"


def test_fixture_layouts_give_the_same_data_and_cases():
    a, b = data.load(ML1M), data.load(CSV)
    assert (a.layout, b.layout) == ("ml-1m", "ml-latest-small")
    assert len(a.movies) >= 200 and len(a.ratings) >= 2000
    assert a.movies == b.movies and a.ratings == b.ratings
    assert any("é" in m.title for m in a.movies.values())  # latin-1 decoded
    assert protocol.eligible_cases(a, 10) == protocol.eligible_cases(b, 10)


def test_fixture_is_what_the_generator_makes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_movielens", FIXTURES / "make_movielens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_all(tmp_path / "dat", tmp_path / "csv")
    for folder, made in ((ML1M, tmp_path / "dat"), (CSV, tmp_path / "csv")):
        for f in folder.iterdir():
            assert (made / f.name).read_bytes() == f.read_bytes(), f.name


def test_cases_follow_the_protocol(tmp_path):
    d = data.load(hand.write(tmp_path / "d"))
    cases = protocol.eligible_cases(d, 2)
    assert cases[1] == protocol.Case(user=1, history=(1, 2), seen=(1, 2, 5), held_out=3)
    assert cases[2] == protocol.Case(user=2, history=(2, 3), seen=(7, 2, 3), held_out=4)
    assert protocol.eligible_cases(d, 3) == {}  # nobody has 3 liked titles before the held-out one
    text = protocol.prompt(cases[1], {m.id: m.title for m in d.movies.values()}, 3)
    assert "1. The Matrix (1999)\n2. Toy Story (1995)" in text and "3 other movies" in text


def test_user_draw_is_seeded_and_checked():
    cases = protocol.eligible_cases(data.load(ML1M), 10)
    a, b = protocol.draw_users(cases, 20, 0), protocol.draw_users(cases, 20, 0)
    assert a == b and len({c.user for c in a}) == 20
    assert a != protocol.draw_users(cases, 20, 1)
    with pytest.raises(ConfigError, match="--users"):
        protocol.draw_users(cases, len(cases) + 1, 0)


def test_hand_built_completions_give_the_known_metrics(tmp_path):
    directory = hand.write(tmp_path / "d")
    config = RecommendConfig(data=str(directory), history=2, k=3,
                             completions=str(hand.write_completions(tmp_path / "c.jsonl")))
    config, path = start(config, tmp_path / "run", {"name": "completions"})
    summary = run_recommend(config, None, path, {"name": "completions"})
    (group,) = summary["groups"]
    users = {u["user"]: u for u in group["per_user"]}
    for user, expected in hand.EXPECTED_USERS.items():
        for name, value in expected.items():
            assert users[user][name] == pytest.approx(value), (user, name)
        assert users[user]["popularity_rank"] == pytest.approx(hand.EXPECTED_POPULARITY[user])
    m = group["metrics"]
    for name in hand.EXPECTED_USERS[1]:
        mean = np.mean([hand.EXPECTED_USERS[u][name] for u in (1, 2)])
        assert m[name]["mean"] == pytest.approx(mean), name
        assert m[name]["ci"][0] <= mean <= m[name]["ci"][1]
    assert m["hit"]["mean"] == 0.25 and m["can_hit"]["mean"] == 0.5
    assert group["coverage"] == pytest.approx(hand.EXPECTED_COVERAGE)
    assert group["cut_titles"] == 1 and group["titles"] == 11
    assert group["match_kinds"] == {"exact": 9, "none": 2}
    assert sorted(group["unmatched"]) == ["Dune (1984)", "Foo Bar (2001)"]


def test_can_hit_is_the_union_and_hit_the_mean_over_samples():
    case = protocol.Case(user=1, history=(), seen=(), held_out=9)
    cat = Catalogue({9: "Big (1988)", 8: "Heat (1995)"})
    scored = [metrics.score_sample(cat, 1, s, t, 5) for s, t in enumerate(["Heat", "Heat", "Big", "Heat"])]
    u = metrics.user_metrics(case, scored, {8: 0.5, 9: 1.0})
    assert (u["hit"], u["can_hit"], u["distinct"], u["distinct_ratio"]) == (0.25, 1.0, 2.0, 0.5)
    assert metrics.user_metrics(case, scored[:2], {8: 0.5, 9: 1.0})["can_hit"] == 0.0


def test_intervals_over_users_cover():
    """95% bootstrap intervals over users cover the true hit rate in about 95% of repeated experiments."""
    rng = np.random.default_rng(7)
    p, covered, trials = 0.3, 0, 300
    for i in range(trials):
        hits = (rng.random((60, 5)) < p).mean(axis=1)  # 60 users x 5 samples
        ci = metrics.with_interval(list(hits), metrics.interval_rng(0, "hit", i))["ci"]
        covered += ci[0] <= p <= ci[1]
    assert covered / trials >= 0.9


def _write(folder, movies: str, ratings: str, names=("movies.dat", "ratings.dat"), encoding="latin-1"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names[0]).write_bytes(movies.encode(encoding))
    (folder / names[1]).write_bytes(ratings.encode(encoding))
    return folder


@pytest.mark.parametrize("movies, ratings, message", [
    ("", "1::1::5::10\n", "movies.dat is empty"),
    ("1::Big (1988)::Comedy\n", "\n\n", "ratings.dat is empty"),
    ("1,Big (1988),Comedy\n", "1::1::5::10\n", r"line 1: no '::' separator \(found ','\)"),
    ("1::Big (1988)::Comedy\n2::Heat (1995)\n", "1::1::5::10\n", "line 2: expected MovieID::Title::Genres"),
    ("1::Big (1988)::Comedy\n", "1::1::5::10\n1::1::5\n", "ratings.dat: line 2: expected UserID::MovieID"),
    ("1::Big (1988)::Comedy\n", "1::1::five::10\n", "line 1: rating 'five' is not a number"),
    ("1::Big (1988)::Comedy\n", "1::1::9::10\n", "rating 9 is outside"),
    ("x::Big (1988)::Comedy\n", "1::1::5::10\n", "line 1: MovieID 'x' is not an integer"),
    ("1::Big (1988)::Comedy\n1::Heat (1995)::Drama\n", "1::1::5::10\n", "line 2: MovieID 1 appears twice"),
    ("1::Big (1988)::Comedy\n", "1::2::5::10\n", "no rating names a movie of the catalogue"),
])
def test_bad_ml1m_data_is_a_one_line_error(tmp_path, movies, ratings, message):
    with pytest.raises(ConfigError, match=message) as exc:
        data.load(_write(tmp_path / "d", movies, ratings))
    assert "\n" not in str(exc.value)


def test_bad_layouts_and_csv(tmp_path):
    with pytest.raises(ConfigError, match="neither movies.dat"):
        data.load(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "movies.dat").write_text("1::Big (1988)::Comedy\n")
    with pytest.raises(ConfigError, match="ratings.dat is missing"):
        data.load(tmp_path / "m")
    with pytest.raises(ConfigError, match="not a directory"):
        data.load(tmp_path / "nowhere")
    csv = _write(tmp_path / "c", "movieId,title,genres\n1,\"Big, The (1988)\",Comedy\n",
                 "user,movie,rating,timestamp\n1,1,5,10\n", ("movies.csv", "ratings.csv"), "utf-8")
    with pytest.raises(ConfigError, match="ratings.csv: line 1: expected the header"):
        data.load(csv)
    (csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,5.0,10\n1,1\n")
    with pytest.raises(ConfigError, match="ratings.csv: line 3: expected 4"):
        data.load(csv)


def test_unknown_movies_are_counted_skips_and_reported(tmp_path):
    ratings = "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in hand.RATINGS) + "1::999::5::600\n2::1::4::700\n" \
        "2::1::2::800\n"
    directory = _write(tmp_path / "d", "".join(f"{m}::{t}::Drama\n" for m, t in hand.MOVIES.items()), ratings)
    d = data.load(directory)
    assert d.skipped == {"ratings of unknown movies": 1, "repeated (user, movie) ratings": 1}
    config = RecommendConfig(data=str(directory), history=2, k=3,
                             completions=str(hand.write_completions(tmp_path / "c.jsonl")))
    config, path = start(config, tmp_path / "run", {"name": "completions"})
    summary = run_recommend(config, None, path, {"name": "completions"})
    assert summary["data"]["skipped"] == d.skipped


def test_a_title_with_the_separator_inside_is_read_and_noted(tmp_path):
    d = data.load(_write(tmp_path / "d", "1::Big (1988)::Comedy\n2::Face::Off (1997)::Action|Sci-Fi\n",
                         "1::1::5::10\n1::2::4::20\n"))
    assert d.movies[2].title == "Face::Off (1997)" and d.movies[2].genres == "Action|Sci-Fi"
    assert len(d.notes) == 1 and "line 2" in d.notes[0]
    with pytest.raises(ConfigError, match="line 1: the last field 'Off \\(1997\\)' is not a genre list"):
        data.load(_write(tmp_path / "e", "2::Face::Off (1997)\n", "1::2::4::20\n"))


def test_resume_refuses_changed_data(tmp_path):
    directory = hand.write(tmp_path / "d")
    config = RecommendConfig(data=str(directory), history=2, k=3,
                             completions=str(hand.write_completions(tmp_path / "c.jsonl")))
    config, path = start(config, tmp_path / "run", {"name": "completions"})
    hand.write(directory, ratings=hand.RATINGS[:-1] + [(2, 4, 4, 300)])
    with pytest.raises(ConfigError, match="changed since this run started"):
        run_recommend(config, None, path, {"name": "completions"})
