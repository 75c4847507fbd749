"""Title parsing and matching for deval recommend: articles, years, case, punctuation, accents, near-misses."""

import pytest

from deval.analyses.recommend.titles import Catalogue, display, key, parse_list, split_year

TITLES = {1: "Matrix, The (1999)", 2: "Toy Story (1995)", 3: "Toy Story 2 (1999)", 4: "Alien (1979)",
          5: "Aliens (1986)", 6: "Psycho (1960)", 7: "Psycho (1998)", 8: "Rocky II (1979)", 9: "Rocky III (1982)",
          10: "City of Lost Children, The (Cité des enfants perdus, La) (1995)", 11: "Seven (Se7en) (1995)",
          12: "Léon: The Professional (1994)", 13: "Terminator 2: Judgment Day (1991)", 14: "Big (1988)",
          15: "Scream 2 (1997)", 16: "Scream 3 (2000)", 17: "Bug's Life, A (1998)", 18: "Usual Suspects, The (1995)",
          19: "E.T. the Extra-Terrestrial (1982)", 20: "Shawshank Redemption, The (1994)"}
POPULARITY = {6: 10, 7: 3}  # the 1960 Psycho is the more rated one


@pytest.fixture(scope="module")
def catalogue():
    return Catalogue(TITLES, POPULARITY)


@pytest.mark.parametrize("text, movie", [
    ("The Matrix (1999)", 1), ("Matrix, The (1999)", 1), ("the matrix", 1), ("THE MATRIX", 1), ("Matrix", 1),
    ("A Bug's Life", 17), ("Bugs Life (1998)", 17), ("The Usual Suspects (1995)", 18),
    ("Leon: The Professional", 12), ("LÉON THE PROFESSIONAL", 12), ("Léon - The Professional (1994)", 12),
    ("The City of Lost Children", 10), ("La Cité des enfants perdus", 10), ("Se7en", 11), ("Seven (1995)", 11),
    ("Terminator 2", 13), ("Terminator 2: Judgment Day (1991)", 13), ("Toy Story II", 3), ("Rocky 2", 8),
    ("E.T. the Extra Terrestrial", 19), ("ET: The Extra-Terrestrial (1982)", 19),
    ("The Shawshank Redemtion (1994)", 20), ("The Shawshenk Redemption", 20),  # typos within the edit budget
    ("Psycho (1998)", 7), ("Psycho (1960)", 6), ("Psycho", 6),  # no year: the more rated of two remakes
    ("Aliens", 5), ("Alien", 4), ("Big", 14),
    ("The Matrix (2000)", 1),  # a year one off still matches (YEAR_SLACK)
    ("Rocky II: 1979", 8), ("Big, 1988", 14),  # a year after a colon or comma
])
def test_matches(catalogue, text, movie):
    assert catalogue.match(text).movie == movie, text


@pytest.mark.parametrize("text", [
    "Toy Story 3", "Toy Story 3 (2010)",  # one character from Toy Story 2: numbers must agree
    "Scream 4 (2011)", "Rocky IV", "Rocky V",  # sequel numbers, roman or not, never match another sequel
    "The Matrix Reloaded (2003)", "Alien 3", "Bog", "Bigg",  # too short for any edit / a different film
    "The Matrix (2005)",  # the year says another film
    "Inception (2010)", "", "Seventh Seal",
])
def test_near_misses_do_not_match(catalogue, text):
    m = catalogue.match(text)
    assert m.movie is None, (text, m)


def test_year_mismatch_and_fuzzy_are_reported(catalogue):
    assert catalogue.match("The Matrix (2005)").how == "year"
    assert catalogue.match("The Shawshenk Redemption").how == "fuzzy"
    assert catalogue.match("the matrix").how == "exact"


def test_display_and_keys():
    assert display("Matrix, The (1999)") == "The Matrix (1999)"
    assert display("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == \
        "The City of Lost Children (Cité des enfants perdus, La) (1995)"
    assert display("Bug's Life, A (1998)") == "A Bug's Life (1998)"
    assert split_year("Toy Story (1995)") == ("Toy Story", 1995)
    assert split_year("No Year Here") == ("No Year Here", None)
    assert split_year("Rocky II: 1979") == ("Rocky II", 1979)
    assert split_year("Blade Runner 2049") == ("Blade Runner 2049", None)
    assert key("The Matrix") == key("Matrix, The") == key("matrix") == "matrix"
    assert key("Amélie") == key("AMELIE")
    assert key("Rocky II") == key("Rocky 2")


def test_parse_list_markers_descriptions_and_cut():
    text = ("Sure! Here are my picks:\n\n1. **The Matrix** (1999) - mind-bending\n2) Alien (1979): classic\n"
            "- Big\n* Heat (1995)\n\nEnjoy!")
    titles, cut = parse_list(text, 3)
    assert titles == ["The Matrix (1999)", "Alien (1979)", "Big"]
    assert cut == 1
    assert parse_list("The Matrix\nAlien\n", 5) == (["The Matrix", "Alien"], 0)  # no markers: every line
    assert parse_list("", 5) == ([], 0)
    assert parse_list("Movies:\nBig", 5) == (["Big"], 0)  # a heading line is not a title
    # an answer cut off by max_tokens inside the last year keeps the title
    assert parse_list("1. Big (1988)\n2. Unforgiven (1992", 5)[0] == ["Big (1988)", "Unforgiven (1992)"]
    assert parse_list("1. Big (1988)\n2. Rear Window (19", 5)[0] == ["Big (1988)", "Rear Window"]
