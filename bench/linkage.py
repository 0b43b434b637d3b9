"""Record linkage on synthetic people: the exchange's match tokens and decision rule beside the
master token and Splink, as pairwise precision, recall and F1.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/linkage.py [--people 20000] [--seed 22]
        [--splink-thresholds 0.9,0.99,0.999] [--no-splink]

The population (seeded, deterministic for one version of faker): households drawn with faker's
en_US name frequencies (common surnames repeat; Smith is 2 % of households) and 15 % from es_MX
(accents, "José Núñez"); couples share the husband's family name and a household ZIP, and some
wives keep their maiden name for other sources; children share the family name and ZIP; twins
share family name, date of birth and household; a Jr is his father's namesake born a
generation later. Each person has 1-5 records, each from a different source; a source decides
the format (v1 first_name/last_name or v2 given_name/family_name), whether sex, postal code and
SSN are sent at all (lab and claims feeds mostly send neither sex nor postal code), and how it
writes names (upper case, accents dropped) and SSNs (dashes or not). On top of that, each
record is perturbed independently at the rates printed (and listed in ``PERTURBATIONS``).

What is measured: the partition each linker makes of the records, as the pairs of records it
puts together, against the pairs of records of one person. Linkers:
  master token       exchange_stream.core.identity (what the exchange had: all four identity
                     fields equal after canonicalisation)
  M1..Mn alone       one match rule of exchange_stream.core.match_tokens (records sharing its
                     token)
  decision rule      exchange_stream.core.match_tokens.link over every record's tokens
  splink             Splink 5 (DuckDB backend) on the same records' plaintext attributes as
                     matching.py normalises them (given name, family name, dob, ssn, ZIP3, sex;
                     not the nickname canonical form): its standard model, with
                     blocking on dob, on ssn, on family-name prefix (3) with birth year, and
                     on given name with birth year; comparisons NameComparison of given and of
                     family name (exact, Jaro-Winkler 0.92/0.88/0.7, term frequencies),
                     DateOfBirthComparison, SSN by Damerau-Levenshtein (1, 2), ZIP3 and sex
                     exact; lambda from deterministic rules, u by random sampling (5M pairs,
                     seeded), m by EM blocked on dob, on ssn, and on both names; one thread, so
                     it repeats. Its pairs are clustered (connected components) at each match
                     probability of --splink-thresholds, one row each: the reference is the
                     best of them, a choice made knowing the truth, which no deployment has
Each linker's time covers what it does from the records' plaintext (normalising included),
except a rule alone, whose row shows link() over that rule's tokens only (the tokens are the
decision rule's); Splink's is one model's training, prediction and clustering, shared by its
rows.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faker import VERSION as faker_version
from faker import Faker
from harness import machine
from nicknames import NickNamer
from nicknames import __version__ as nicknames_version

from exchange_stream.core.formats import for_label
from exchange_stream.core.identity import IdentityError, Tokenizer
from exchange_stream.core.match_tokens import RULES, MatchKeys, link, match_tokens
from exchange_stream.core.matching import MatchAttributes, match_attributes

SECRET = "bench-linkage-secret"

# Per-record perturbation rates (each drawn independently per record).
PERTURBATIONS: dict[str, float] = {
    "nickname (given name → a nickname of it)": 0.08,
    "one typo in the given or the family name": 0.06,
    "family-name change (a wife's maiden or hyphenated name)": 0.20,
    "SSN missing (beyond the source's own rate)": 0.10,
    "postal code missing (beyond the source's own rate)": 0.10,
    "sex missing (beyond the source's own rate)": 0.05,
    "day and month of birth swapped (when both <= 12)": 0.03,
    "two adjacent SSN digits transposed": 0.02,
    "placeholder SSN (123-45-6789, 999-99-9999, 000-00-0000)": 0.01,
    "Jr/Sr written in the family name (a Jr's or Sr's record)": 0.50,
    "address of an earlier home (people who moved)": 0.40,
}
P_NICK, P_TYPO, P_MAIDEN, P_SSN, P_ZIP, P_SEX, P_SWAP, P_TRANS, P_FAKESSN, P_SUFFIX, P_OLD = (
    PERTURBATIONS.values()
)

# Population shape.
P_HISPANIC = 0.15  # households from the es_MX locale
P_TWINS = 0.016  # a birth is of twins (3.2 % of children are twins, as in US births)
P_JUNIOR = 0.12  # the first son of a family is his father's namesake (Jr/Sr)
P_MAIDEN_NAME = 0.8  # a wife took her husband's name, so some records may carry her maiden name
P_HYPHENATED = 0.3  # such a record has "Maiden-Married" rather than the maiden name alone
P_COMPOUND = 0.3  # an es_MX family has two surnames ("García López")
P_MOVED = 0.08  # people with an earlier address in some records
P_NO_SSN = 0.03  # people who have no SSN at all (newborns, non-residents)
RECORDS_PER_PERSON = {1: 0.2, 2: 0.25, 3: 0.25, 4: 0.15, 5: 0.15}


@dataclass(frozen=True)
class Source:
    """A feed: its format, the share of its records that carry sex, postal code and SSN, and
    how it writes names and SSNs."""

    name: str
    fmt: str  # "v1" or "v2"
    sex: float
    postal: float
    ssn: float
    upper: bool = False
    ascii_only: bool = False
    ssn_dashes: bool = True
    zip_plus4: float = 0.0


SOURCES: tuple[Source, ...] = (
    Source("st-mary-ehr", "v2", sex=0.97, postal=0.95, ssn=0.85, zip_plus4=0.3),
    Source("city-hospital", "v2", sex=0.95, postal=0.90, ssn=0.70, upper=True),
    Source("clinic-west", "v1", sex=0.90, postal=0.90, ssn=0.50, ssn_dashes=False),
    Source("regional-lab", "v2", sex=0.0, postal=0.0, ssn=0.30, ascii_only=True),
    Source("reference-lab", "v1", sex=0.0, postal=0.0, ssn=0.20, upper=True, ascii_only=True),
    Source("payer-claims", "v1", sex=0.30, postal=0.0, ssn=0.95, upper=True, ssn_dashes=False),
    Source("medicaid-claims", "v2", sex=0.0, postal=0.0, ssn=0.90, ascii_only=True),
    Source("pharmacy", "v2", sex=0.0, postal=0.60, ssn=0.10),
)


@dataclass
class Person:
    pid: int
    given: str
    family: str
    sex: str
    dob: date
    ssn: str | None
    zip5: str
    old_zip5: str | None = None
    maiden: str | None = None
    suffix: str | None = None  # "Jr" or "Sr"
    household: int = 0


@dataclass
class Record:
    rid: int
    pid: int
    source: str
    fmt: str
    patient: dict[str, str] = field(default_factory=dict)
    perturbed: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# The population


class Population:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.us = Faker("en_US")
        self.us.seed_instance(seed)
        self.mx = Faker("es_MX")
        self.mx.seed_instance(seed + 1)
        self.ssns: set[str] = set()
        self.people: list[Person] = []
        self.households = 0

    def ssn(self) -> str | None:
        if self.rng.random() < P_NO_SSN:
            return None
        while True:
            value = self.us.ssn()
            if value not in self.ssns:
                self.ssns.add(value)
                return value

    def given(self, fake: Faker, sex: str) -> str:
        return fake.first_name_male() if sex == "male" else fake.first_name_female()

    def zip5(self) -> str:
        return self.us.postcode()

    def birthday(self, year: int) -> date:
        return date(year, 1, 1) + timedelta(days=self.rng.randrange(365))

    def add(self, **kw: object) -> Person:
        person = Person(pid=len(self.people), household=self.households, **kw)  # type: ignore[arg-type]
        if self.rng.random() < P_MOVED:
            person.old_zip5 = self.zip5()
        self.people.append(person)
        return person

    def household(self) -> None:
        """One household: 30 % one adult, 25 % a couple, 45 % a couple with 1-4 births of
        children (born when the father was 20-40), all at one ZIP."""
        rng = self.rng
        fake = self.mx if rng.random() < P_HISPANIC else self.us
        self.households += 1
        zip5 = self.zip5()
        family = fake.last_name()
        if fake is self.mx and rng.random() < P_COMPOUND:
            family = f"{family} {fake.last_name()}"  # a compound Spanish surname
        head_year = rng.randint(1935, 2003)
        kind = rng.random()
        if kind < 0.3:  # one adult
            sex = rng.choice(("male", "female"))
            self.add(
                given=self.given(fake, sex),
                family=family,
                sex=sex,
                dob=self.birthday(head_year),
                ssn=self.ssn(),
                zip5=zip5,
            )
            return
        father = self.add(
            given=self.given(fake, "male"),
            family=family,
            sex="male",
            dob=self.birthday(head_year),
            ssn=self.ssn(),
            zip5=zip5,
        )
        mother_year = min(2003, max(1935, head_year + round(rng.gauss(0, 3))))
        self.add(
            given=self.given(fake, "female"),
            family=family,
            sex="female",
            dob=self.birthday(mother_year),
            ssn=self.ssn(),
            zip5=zip5,
            maiden=fake.last_name() if rng.random() < P_MAIDEN_NAME else None,
        )
        if kind < 0.55 or head_year > 2000:  # a couple without children at home
            return
        children = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        first_son = True
        for _ in range(children):
            year = min(2024, head_year + rng.randint(20, 40))
            dob = self.birthday(year)
            twins = rng.random() < P_TWINS
            sibling: str | None = None
            for _ in range(2 if twins else 1):
                sex = rng.choice(("male", "female"))
                if sex == "male" and first_son and rng.random() < P_JUNIOR:
                    given, suffix = father.given, "Jr"
                    father.suffix = "Sr"
                else:
                    given, suffix = self.given(fake, sex), None
                    # Parents do not give twins one name, nor a name and its nickname.
                    while sibling and related_names(given, sibling):
                        given = self.given(fake, sex)
                sibling = given
                first_son = first_son and sex != "male"
                self.add(
                    given=given,
                    family=family,
                    sex=sex,
                    dob=dob,
                    ssn=None if year >= 2024 else self.ssn(),
                    zip5=zip5,
                    suffix=suffix,
                )

    def generate(self, count: int) -> list[Person]:
        while len(self.people) < count:
            self.household()
        return self.people


# ---------------------------------------------------------------------------------------------
# Records and their perturbations

_NICKNAMES = NickNamer()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def related_names(a: str, b: str) -> bool:
    """One name, or a name and a nickname of it (either way), in the nicknames dataset."""
    a, b = a.lower(), b.lower()
    return a == b or b in _NICKNAMES.nicknames_of(a) or a in _NICKNAMES.nicknames_of(b)


def typo(rng: random.Random, name: str) -> str:
    """One edit at a letter drawn uniformly (the first included): a substitution, deletion,
    insertion or transposition with the next letter."""
    positions = [i for i in range(len(name)) if name[i].isalpha()]
    if not positions:
        return name
    i = rng.choice(positions)
    kind = rng.randrange(4)
    letter = rng.choice(_LETTERS)
    if name[i].isupper():
        letter = letter.upper()
    if kind == 0:
        return name[:i] + letter + name[i + 1 :]
    if kind == 1 and len(name) > 3:
        return name[:i] + name[i + 1 :]
    if kind == 2:
        return name[:i] + letter + name[i:]
    if i + 1 < len(name) and name[i + 1].isalpha() and name[i] != name[i + 1]:
        return name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    return name[:i] + letter + name[i + 1 :]


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def sends(
    rng: random.Random, source_rate: float, missing: float, tags: list[str], tag: str
) -> bool:
    """Whether a record carries a field its source sends at ``source_rate``, the field then
    being missing at ``missing`` (tagged ``tag``)."""
    if rng.random() >= source_rate:
        return False
    if rng.random() < missing:
        tags.append(tag)
        return False
    return True


def make_records(people: Sequence[Person], rng: random.Random) -> tuple[list[Record], Counter]:
    records: list[Record] = []
    applied: Counter = Counter()
    counts, weights = zip(*RECORDS_PER_PERSON.items(), strict=True)
    for person in people:
        n = rng.choices(counts, weights)[0]
        for source in rng.sample(SOURCES, n):
            tags: list[str] = []
            given, family = person.given, person.family
            if rng.random() < P_NICK:
                options = sorted(_NICKNAMES.nicknames_of(given))
                if options:
                    given = rng.choice(options).capitalize()
                    tags.append("nickname")
            if person.maiden and rng.random() < P_MAIDEN:
                family = (
                    person.maiden
                    if rng.random() < 1 - P_HYPHENATED
                    else f"{person.maiden}-{person.family.replace(' ', '-')}"
                )
                tags.append("family-name change")
            if rng.random() < P_TYPO:
                if rng.random() < 0.5:
                    given = typo(rng, given)
                else:
                    family = typo(rng, family)
                tags.append("typo")
            if person.suffix and rng.random() < P_SUFFIX:
                family = f"{family} {person.suffix}."
                tags.append("suffix")
            if source.ascii_only:
                given, family = strip_accents(given), strip_accents(family)
            if source.upper:
                given, family = given.upper(), family.upper()
            dob = person.dob
            if dob.day <= 12 and dob.day != dob.month and rng.random() < P_SWAP:
                dob = date(dob.year, dob.day, dob.month)
                tags.append("day/month swap")
            patient: dict[str, str] = {"dob": dob.isoformat()}
            fmt = for_label(source.fmt)
            patient[fmt.given_name_field], patient[fmt.family_name_field] = given, family
            ssn = person.ssn
            if ssn and sends(rng, source.ssn, P_SSN, tags, "ssn missing"):
                digits = ssn.replace("-", "")
                if rng.random() < P_TRANS:
                    i = rng.randrange(8)
                    if digits[i] != digits[i + 1]:
                        digits = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
                        tags.append("ssn transposed")
                if source.ssn_dashes:
                    digits = f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"
                patient["ssn"] = digits
            elif rng.random() < P_FAKESSN:
                patient["ssn"] = rng.choice(("123-45-6789", "999-99-9999", "000-00-0000"))
                tags.append("placeholder ssn")
            if sends(rng, source.sex, P_SEX, tags, "sex missing"):
                patient["sex"] = person.sex
            if sends(rng, source.postal, P_ZIP, tags, "postal code missing"):
                zip5 = person.zip5
                if person.old_zip5 and rng.random() < P_OLD:
                    zip5 = person.old_zip5
                    tags.append("earlier address")
                if rng.random() < source.zip_plus4:
                    zip5 = f"{zip5}-{rng.randrange(10000):04d}"
                patient["postal_code"] = zip5
            applied.update(tags)
            records.append(
                Record(len(records), person.pid, source.name, source.fmt, patient, tuple(tags))
            )
    return records, applied


# ---------------------------------------------------------------------------------------------
# Measuring a partition


@dataclass(frozen=True)
class Score:
    name: str
    predicted_pairs: int
    true_positive_pairs: int
    true_pairs: int
    seconds: float

    @property
    def precision(self) -> float:
        return self.true_positive_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.true_positive_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def pairs(n: int) -> int:
    return n * (n - 1) // 2


def score(
    name: str, clusters: Iterable[Iterable[int]], records: Sequence[Record], seconds: float
) -> Score:
    truth = Counter(r.pid for r in records)
    predicted = tp = 0
    for cluster in clusters:
        members = list(cluster)
        predicted += pairs(len(members))
        tp += sum(pairs(c) for c in Counter(records[i].pid for i in members).values())
    return Score(name, predicted, tp, sum(pairs(c) for c in truth.values()), seconds)


def group_by(keys: Iterable[tuple[int, object]]) -> list[list[int]]:
    """Clusters of records sharing a key; a record whose key is None stands alone."""
    groups: dict[object, list[int]] = defaultdict(list)
    alone: list[list[int]] = []
    for rid, key in keys:
        if key is None:
            alone.append([rid])
        else:
            groups[key].append(rid)
    return [*groups.values(), *alone]


# ---------------------------------------------------------------------------------------------
# Linkers


def master_token(records: Sequence[Record]) -> list[list[int]]:
    tokenizer = Tokenizer(SECRET)

    def key(r: Record) -> str | None:
        try:
            return tokenizer.token(*for_label(r.fmt).identity(r.patient))
        except IdentityError:
            return None  # a record the tokenizer refuses links to nothing

    return group_by((r.rid, key(r)) for r in records)


def splink_clusters(
    attrs: Sequence[MatchAttributes], thresholds: Sequence[float], seed: int
) -> dict[float, list[list[int]]]:
    """Splink's clusters at each match-probability threshold, from one trained model."""
    import duckdb
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    # Splink warns of levels EM could not train (a blocked column agrees in all its pairs).
    logging.getLogger("splink").setLevel(logging.ERROR)

    rows = [
        {
            "unique_id": i,
            "given": a.given,
            "family": a.family,
            "dob": a.dob,
            "ssn": a.ssn,
            "zip3": a.zip3,
            "sex": a.sex,
        }
        for i, a in enumerate(attrs)
    ]
    settings = SettingsCreator(
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[
            block_on("dob"),
            block_on("ssn"),
            block_on("substr(family, 1, 3)", "substr(dob, 1, 4)"),
            block_on("given", "substr(dob, 1, 4)"),
        ],
        comparisons=[
            # exact, Jaro-Winkler >= 0.92, >= 0.88, >= 0.7, else; term frequencies on exact
            cl.NameComparison("given").configure(term_frequency_adjustments=True),
            cl.NameComparison("family").configure(term_frequency_adjustments=True),
            # exact, one edit, within a month, a year, ten years, else
            cl.DateOfBirthComparison("dob", input_is_string=True),
            cl.DamerauLevenshteinAtThresholds("ssn", [1, 2]),
            cl.ExactMatch("zip3"),
            cl.ExactMatch("sex"),
        ],
    )
    # One thread: sampling and EM then repeat exactly from run to run.
    db_api = DuckDBAPI(duckdb.connect(config={"threads": 1}))
    linker = Linker(db_api.register(rows), settings, log_level=None)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("ssn", "dob"), block_on("given", "family", "dob")], recall=0.8
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=5_000_000, seed=seed)
    for rule in (block_on("dob"), block_on("ssn"), block_on("given", "family")):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    predictions = linker.inference.predict(threshold_match_probability=min(thresholds))
    out: dict[float, list[list[int]]] = {}
    for threshold in thresholds:
        clustered = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=threshold
        )
        groups: dict[object, list[int]] = defaultdict(list)
        for row in clustered.as_record_list():
            groups[row["cluster_id"]].append(int(row["unique_id"]))
        out[threshold] = list(groups.values())
    return out


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Report


def print_population(people: Sequence[Person], records: Sequence[Record], applied: Counter) -> None:
    households = Counter(p.household for p in people)
    twins = Counter((p.household, p.dob) for p in people)
    print(
        f"\npopulation: {len(people)} people in {len(households)} households, "
        f"{len(records)} records ({len(records) / len(people):.2f} per person), "
        f"{sum(pairs(c) for c in Counter(r.pid for r in records).values())} true pairs"
    )
    surnames = Counter(p.family for p in people).most_common(3)
    print(
        f"  twin pairs {sum(1 for c in twins.values() if c >= 2)}, "
        f"Jr/Sr pairs {sum(1 for p in people if p.suffix == 'Jr')}, "
        f"wives with a maiden name {sum(1 for p in people if p.maiden)}, "
        f"people who moved {sum(1 for p in people if p.old_zip5)}, "
        f"without an SSN {sum(1 for p in people if p.ssn is None)}; "
        "most common family names " + ", ".join(f"{name} {count}" for name, count in surnames)
    )
    print("\nsources (share of records that carry the field):")
    print(f"  {'source':<17}{'fmt':<5}{'sex':>6}{'postal':>8}{'ssn':>6}  style")
    for s in SOURCES:
        style = ", ".join(
            x
            for x, on in (
                ("UPPER", s.upper),
                ("accents dropped", s.ascii_only),
                ("ssn without dashes", not s.ssn_dashes),
                (f"ZIP+4 {s.zip_plus4:.0%}", s.zip_plus4 > 0),
            )
            if on
        )
        print(f"  {s.name:<17}{s.fmt:<5}{s.sex:>6.0%}{s.postal:>8.0%}{s.ssn:>6.0%}  {style}")
    print("\nperturbations (per record, independently; applied = records changed):")
    short: dict[str, str] = dict(
        zip(
            PERTURBATIONS,
            (
                "nickname",
                "typo",
                "family-name change",
                "ssn missing",
                "postal code missing",
                "sex missing",
                "day/month swap",
                "ssn transposed",
                "placeholder ssn",
                "suffix",
                "earlier address",
            ),
            strict=True,
        )
    )
    for name, rate in PERTURBATIONS.items():
        key = short[name]
        shown = f"applied {applied[key]}"
        print(f"  {rate:>5.0%}  {name:<60}{shown}")


def print_scores(scores: Sequence[Score]) -> None:
    print(f"\n{'linker':<44}{'pairs':>9}{'precision':>11}{'recall':>9}{'F1':>8}{'seconds':>9}")
    for s in scores:
        print(
            f"{s.name:<44}{s.predicted_pairs:>9}{s.precision:>11.4%}{s.recall:>9.2%}"
            f"{s.f1:>8.2%}{s.seconds:>9.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument(
        "--splink-thresholds",
        default="0.9,0.99,0.999",
        help="match probabilities at which Splink's pairs are clustered (comma-separated)",
    )
    parser.add_argument("--no-splink", action="store_true")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.splink_thresholds.split(",")]

    print(machine().line())
    print(
        f"seed {args.seed}; faker {faker_version}, nicknames {nicknames_version}, "
        f"jellyfish {version('jellyfish')}, splink {version('splink')}"
    )
    people = Population(args.seed).generate(args.people)
    records, applied = make_records(people, random.Random(args.seed + 2))
    print_population(people, records, applied)

    scores: list[Score] = []
    clusters, seconds = timed(lambda: master_token(records))
    scores.append(score("master token (identity.py)", clusters, records, seconds))

    keys = MatchKeys(SECRET)
    attrs, normalise_s = timed(
        lambda: [match_attributes(r.patient, for_label(r.fmt)) for r in records]
    )
    tokens, token_s = timed(lambda: [match_tokens(a, keys) for a in attrs])  # type: ignore[attr-defined]
    for rule in RULES:
        clusters, seconds = timed(lambda rule=rule: link(enumerate(tokens), [rule.name]))  # type: ignore[arg-type]
        label = f"{rule.name} alone: {' | '.join(rule.attributes)}"
        scores.append(score(label, clusters, records, seconds))  # type: ignore[arg-type]
    partition, link_s = timed(lambda: link(enumerate(tokens)))  # type: ignore[arg-type]
    total_s = normalise_s + token_s + link_s
    name = f"decision rule: any of {RULES[0].name}-{RULES[-1].name} (link)"
    scores.append(score(name, partition, records, total_s))  # type: ignore[arg-type]

    if not args.no_splink:
        by_threshold, splink_s = timed(
            lambda: splink_clusters(attrs, thresholds, args.seed)  # type: ignore[arg-type]
        )
        for threshold, clusters in by_threshold.items():  # type: ignore[attr-defined]
            name = f"splink, match probability >= {threshold:g}"
            scores.append(score(name, clusters, records, splink_s + normalise_s))
    print_scores(scores)
    print(
        f"\nexchange: normalise {normalise_s:.2f} s + tokens {token_s:.2f} s + link {link_s:.2f} s"
        f" for {len(records)} records; splink's time (one model, clustered at each threshold)"
        " includes the same normalising"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
