"""Writes the default invented facts set shipped in ``jaxparams/edit/data/`` (deterministic).

  python benchmarks/make_facts_set.py                       # the packaged default set
  python benchmarks/make_facts_set.py --subjects 200 --edits 1000 --out DIR   # 1000 edits

Subjects are invented two-word names, objects invented or common words; every subject has one
fact per relation. Edits change the object of distinct (subject, relation) facts to another object
of the same relation (CounterFact style).
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


def main(n_subjects: int = 100, n_edits: int = 300, seed: int = 0, out: pathlib.Path = OUT
         ) -> None:
  if n_edits > n_subjects * len(RELATIONS):
    raise SystemExit(f"{n_edits} edits need at least {-(-n_edits // len(RELATIONS))} subjects")
  rng = random.Random(seed)
  lasts = sorted({a + b for a in SYL_A for b in SYL_B})
  if n_subjects > len(lasts):
    raise SystemExit(f"at most {len(lasts)} subjects")
  rng.shuffle(lasts)
  subjects = [f"{rng.choice(FIRST)} {last}" for last in lasts[:n_subjects]]
  facts = []
  for s in subjects:
    for rel, spec in RELATIONS.items():
      facts.append({"subject": s, "relation": rel, "object": rng.choice(spec["objects"])})
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
  a = ap.parse_args()
  main(a.subjects, a.edits, a.seed, pathlib.Path(a.out))
