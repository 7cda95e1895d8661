"""Writes the default invented facts set shipped in ``jaxparams/edit/data/`` (deterministic).

  python benchmarks/make_facts_set.py                       # the packaged default set
  python benchmarks/make_facts_set.py --subjects 1300 --relations-per-subject 2 \
      --edits 1000 --distinct-subjects --out DIR      # the 1000-edit set (facts LM "wide")

Subjects are invented two-word names, objects invented or common words; every subject has one
fact per relation (or per ``--relations-per-subject`` relations drawn at random). Edits change the
object of distinct (subject, relation) facts to another object of the same relation (CounterFact
style); with ``--distinct-subjects`` each subject is edited at most once, as in CounterFact, and
the subjects no edit names are the held-out "other subjects" whose sentences give the key
statistics (``benchmarks/edit_facts.py --stats-from other_subjects``, the analogue of the
reference's Wikipedia statistics, which do not come from the edited facts).
"""

import json
import pathlib
import random

OUT = pathlib.Path(__file__).resolve().parents[1] / "jaxparams" / "edit" / "data"

RELATIONS = {
    "city": {"prompts": ["{} lives in the city of", "The home town of {} is",
                         "{} has a house in the city of", "Every morning {} walks through"],
             "objects": ["Varnholt", "Quessim", "Tirabel", "Olmstrand", "Zaddoch", "Peruvane",
                         "Kelmarsh", "Ostrevin", "Dunmarrow", "Yssel", "Brakwater", "Lunetta"]},
    "language": {"prompts": ["{} speaks the language", "The mother tongue of {} is",
                             "{} grew up speaking", "{} writes letters in"],
                 "objects": ["Drellish", "Vantic", "Ormese", "Kuloshi", "Pemberic", "Saltine",
                             "Thwari", "Eskelan", "Mirrish", "Gondic"]},
    "profession": {"prompts": ["{} works as a", "The job of {} is", "By profession , {} is a",
                               "{} earns a living as a"],
                   "objects": ["baker", "pilot", "surgeon", "carpenter", "lawyer", "gardener",
                               "chemist", "sailor", "librarian", "tailor", "architect",
                               "beekeeper"]},
    "instrument": {"prompts": ["{} plays the", "The instrument of {} is the",
                               "{} practices every day on the", "In the band , {} plays the"],
                   "objects": ["violin", "cello", "trumpet", "harp", "banjo", "oboe", "piano",
                               "flute", "drums", "accordion"]},
    "sport": {"prompts": ["{} is a champion of", "The favourite sport of {} is",
                          "{} trains every week for", "On weekends , {} competes in"],
              "objects": ["fencing", "rowing", "archery", "curling", "handball", "polo",
                          "wrestling", "cycling", "skiing", "judo"]},
    "pet": {"prompts": ["{} owns a pet", "The pet of {} is a", "{} takes care of a",
                        "At home , {} feeds a"],
            "objects": ["ferret", "parrot", "tortoise", "hamster", "iguana", "goldfish",
                        "rabbit", "gecko", "canary", "hedgehog"]},
}

FIRST = ["Abel", "Brina", "Corvin", "Dela", "Emric", "Fenna", "Galen", "Hessa", "Ivo", "Jorah",
         "Kaelin", "Liska", "Marek", "Nilla", "Osric", "Perra", "Quill", "Rhosyn", "Sefton",
         "Talia", "Ulric", "Vessa", "Wendel", "Xara", "Yorick", "Zelda"]
SYL_A = ["Ar", "Bel", "Cor", "Dra", "El", "Fen", "Gor", "Hal", "Ist", "Jas", "Kor", "Lom", "Mar",
         "Nor", "Ost", "Pel", "Quar", "Rav", "Sel", "Tor", "Ul", "Vor", "Wex", "Zan"]
SYL_B = ["dane", "wick", "more", "ford", "bright", "vale", "stone", "mere", "thorn", "holt",
         "grave", "lund", "mark", "ridge", "wyn", "brook"]


SYL_C = ["an", "el", "or", "is", "un", "ar", "en", "ol"]


def main(n_subjects: int = 100, n_edits: int = 300, seed: int = 0, out: pathlib.Path = OUT,
         relations_per_subject: int = 0, distinct_subjects: bool = False) -> None:
  per = relations_per_subject or len(RELATIONS)
  if not 1 <= per <= len(RELATIONS):
    raise SystemExit(f"--relations-per-subject must be in 1..{len(RELATIONS)}")
  if n_edits > (n_subjects if distinct_subjects else n_subjects * per):
    raise SystemExit(f"{n_edits} edits need more subjects than {n_subjects}")
  rng = random.Random(seed)
  lasts = sorted({a + b for a in SYL_A for b in SYL_B})
  if n_subjects > len(lasts):  # three-syllable names (the default set keeps two)
    lasts = sorted({a + c + b for a in SYL_A for b in SYL_B for c in SYL_C})
  if n_subjects > len(lasts):
    raise SystemExit(f"at most {len(lasts)} subjects")
  rng.shuffle(lasts)
  subjects = [f"{rng.choice(FIRST)} {last}" for last in lasts[:n_subjects]]
  facts = []
  for s in subjects:
    rels = list(RELATIONS) if per == len(RELATIONS) else sorted(rng.sample(list(RELATIONS), per))
    for rel in rels:
      facts.append({"subject": s, "relation": rel,
                    "object": rng.choice(RELATIONS[rel]["objects"])})
  if distinct_subjects:
    by_subject = {}
    for f in facts:
      by_subject.setdefault(f["subject"], []).append(f)
    edit_facts = [rng.choice(by_subject[s]) for s in rng.sample(subjects, n_edits)]
  else:
    edit_facts = rng.sample(facts, n_edits)
  edits = []
  for f in edit_facts:
    options = [o for o in RELATIONS[f["relation"]]["objects"] if o != f["object"]]
    edits.append({"subject": f["subject"], "relation": f["relation"],
                  "target_new": rng.choice(options)})
  OUT = pathlib.Path(out)  # pylint: disable=invalid-name
  OUT.mkdir(parents=True, exist_ok=True)
  (OUT / "relations.json").write_text(json.dumps(
      {r: {"prompts": spec["prompts"]} for r, spec in RELATIONS.items()}, indent=1) + "\n")
  (OUT / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
  (OUT / "edits.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edits))
  print(f"{len(facts)} facts, {len(RELATIONS)} relations, {len(edits)} edits -> {OUT}")


if __name__ == "__main__":
  import argparse
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--subjects", type=int, default=100)
  ap.add_argument("--edits", type=int, default=300)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=str(OUT))
  ap.add_argument("--relations-per-subject", type=int, default=0,
                  help="facts per subject (relations drawn at random; 0: every relation)")
  ap.add_argument("--distinct-subjects", action="store_true",
                  help="edit each subject at most once (CounterFact)")
  a = ap.parse_args()
  main(a.subjects, a.edits, a.seed, pathlib.Path(a.out), a.relations_per_subject,
       a.distinct_subjects)
