#!/usr/bin/env python3
"""Builds the de-identification gate's Unicode/format corpus (deterministic, no randomness):

  tests/data/deid/unicode_variants.jsonl   one record per variant of a PHI item: the same
      identifiers as written by word processors, PDF exports and EHR viewers -- no-break,
      thin, narrow, ideographic and em spaces, tabs, line breaks, en/em dashes, minus signs,
      non-breaking hyphens, fullwidth digits and letters, zero-width characters, soft
      hyphens, curly apostrophes, CRLF, upper and lower case, surname particles.
      {"text", "rule", "start", "end", "tokens", "prefix", "suffix"}: byte span of the PHI
      value in text (UTF-8), the rule that must flag all of it, the PHI's word tokens (none
      may survive redaction), and the clinical text around it (must survive intact).
  tests/data/deid/unicode_negatives.jsonl  clinical text written with the same characters
      (doses "5–10 mg", "BP 120/80", staging "T2N0M0", eponyms "Crohn’s") that must not be
      flagged: {"text"}.

Every item is written through each transform of its family; a transform applies to the
anchor ("Dr. ", "MRN: ") and the value alike, as an export would. Names, numbers and places
are invented. Run from the repository root: python3 tests/ref/make_deid_unicode_corpus.py
"""
import json
import re

OUT = "tests/data/deid"
PREFIX = "Clinic note: BP 120/80, HR 72, titrated 5-10 mg. "
SUFFIX = " today. Staging T2N0M0; plan: continue 500 mg daily."

DASHES = {"en dash": "\u2013", "em dash": "\u2014", "non-breaking hyphen": "\u2011",
          "hyphen": "\u2010", "minus sign": "\u2212", "small hyphen-minus": "\ufe63",
          "fullwidth hyphen-minus": "\uff0d", "figure dash": "\u2012", "small em dash": "\ufe58"}
SPACES = {"no-break space": "\u00a0", "thin space": "\u2009", "narrow no-break space": "\u202f",
          "em space": "\u2003", "ideographic space": "\u3000", "figure space": "\u2007",
          "tab": "\t", "line break": "\n", "CRLF": "\r\n", "two spaces": "  "}


def fullwidth(s, digits_only=False):
    out = []
    for c in s:
        if "0" <= c <= "9" or (not digits_only and "!" <= c <= "~" and c != " "):
            out.append(chr(ord(c) + 0xFEE0))
        else:
            out.append(c)
    return "".join(out)


def zero_width(s, zw="\u200b"):
    """A zero-width character after the first character of every word of 2+ characters."""
    return " ".join(w[0] + zw + w[1:] if len(w) > 1 else w for w in s.split(" "))


def space_transforms():
    return [(name, (lambda ch: (lambda s: s.replace(" ", ch)))(ch)) for name, ch in SPACES.items()]


def dash_transforms():
    return [(name, (lambda ch: (lambda s: s.replace("-", ch)))(ch)) for name, ch in DASHES.items()]


T_FULL_DIGITS = ("fullwidth digits", lambda s: fullwidth(s, True))
T_FULL = ("fullwidth", fullwidth)
T_ZW = ("zero-width space", zero_width)
T_ZWJ = ("zero-width joiner", lambda s: zero_width(s, "\u200d"))
T_SHY = ("soft hyphen", lambda s: zero_width(s, "\u00ad"))
T_WJ = ("word joiner", lambda s: zero_width(s, "\u2060"))
T_UPPER = ("upper case", str.upper)
T_LOWER = ("lower case", str.lower)
T_CURLY = ("curly apostrophe", lambda s: s.replace("'", "\u2019"))

# (rule, anchor, value, after, transforms). The anchor is context the rule needs; the value
# is what must be flagged; after ends the phrase.
ITEMS = [
    ("NAME", "seen by Dr. ", "Smith", "", space_transforms() + [T_ZW, T_SHY, T_UPPER, T_FULL]),
    ("NAME", "seen by dr. ", "Smith", "", [("as is", str)] + space_transforms()[:3]),
    ("NAME", "referred to Dr. ", "van der Berg", "", [("as is", str)] + space_transforms()[:4] + [T_ZWJ]),
    ("NAME", "consulted Dr. ", "de la Cruz", "", [("as is", str)] + space_transforms()[:3]),
    ("NAME", "Mrs. ", "O'Brien-Walsh", " called", [("as is", str), T_CURLY] + dash_transforms()[:4]),
    ("NAME", "Mr. ", "McAllister", " called", [("as is", str), T_WJ] + space_transforms()[:2]),
    ("NAME", "Patient Name: ", "Jane Roe", "", space_transforms()[:6] + [T_UPPER]),
    ("DATE", "admitted on ", "March 14, 2021", "", space_transforms()[:8] + [T_UPPER, T_FULL_DIGITS]),
    ("DATE", "born ", "14 March 2021", "", space_transforms()[:3]),
    ("DATE", "seen ", "2021-03-14", "", dash_transforms() + [T_FULL_DIGITS, T_FULL]),
    ("DATE", "dated ", "03/14/2021", "", [T_FULL_DIGITS, T_FULL, ("fraction slash", lambda s: s.replace("/", "\u2044")),
                                          ("division slash", lambda s: s.replace("/", "\u2215"))]),
    ("PHONE", "call ", "555-123-4567", "", dash_transforms() + [T_FULL_DIGITS]),
    ("PHONE", "phone ", "(555) 123-4567", "", space_transforms()[:3] + dash_transforms()[:2] + [T_FULL]),
    ("PHONE", "cell ", "555 123 4567", "", space_transforms()[:3]),
    ("FAX", "fax: ", "555-123-4568", "", dash_transforms()[:5] + [T_FULL_DIGITS]),
    ("EMAIL", "e-mail ", "jane.roe@example.com", "", [T_FULL, T_UPPER, T_ZW,
                                                     ("small commercial at", lambda s: s.replace("@", "\ufe6b"))]),
    ("SSN", "SSN ", "123-45-6789", "", dash_transforms() + [T_FULL_DIGITS]),
    ("SSN", "SSN: ", "123 45 6789", "", space_transforms()[:3]),
    ("MRN", "MRN: ", "1234567", "", [T_FULL_DIGITS, T_FULL, T_ZW] + space_transforms()[:3]),
    ("MRN", "medical record number ", "00482913", "", [T_UPPER] + space_transforms()[:2]),
    ("ACCOUNT", "account number: ", "88442211", "", [T_FULL_DIGITS, T_UPPER] + space_transforms()[:3]),
    ("ACCOUNT", "policy # ", "ZX-99812", "", dash_transforms()[:3] + [T_FULL]),
    ("URL", "see ", "www.example-clinic.com", "", dash_transforms()[:3] + [T_FULL, T_UPPER]),
    ("URL", "portal ", "https://portal.example.org/pt", "", [T_FULL, T_ZW]),
    ("IP", "from ", "192.168.10.23", "", [T_FULL_DIGITS, T_FULL,
                                         ("one dot leader", lambda s: s.replace(".", "\u2024"))]),
    ("ADDRESS", "lives at ", "123 Main Street", "", space_transforms() + [T_UPPER, T_LOWER, T_ZW, T_FULL_DIGITS]),
    ("ADDRESS", "moved to ", "42 elm street", "", [("as is", str)] + space_transforms()[:3]),
    ("ADDRESS", "lives at ", "77 N. Elm Rd.", "", space_transforms()[:3]),
    ("ADDRESS", "address ", "Apt 4B", "", space_transforms()[:3]),
    ("ZIP", "42 elm street, boston ma ", "02115", "", [("as is", str), T_UPPER] + space_transforms()[:3]),
    ("ZIP", "Springfield, IL ", "62704", "", space_transforms()[:4] + [T_FULL_DIGITS]),
    ("ZIP", "Springfield, IL ", "62704-1234", "", dash_transforms()[:4]),
    ("AGE_OVER_89", "a ", "92", "-year-old woman", dash_transforms()[:5] + [T_FULL_DIGITS]),
    ("AGE_OVER_89", "she is ", "94", " years old", space_transforms()[:4]),
    ("AGE_OVER_89", "a ", "ninety-two", "-year-old man", dash_transforms()[:3]),
]

NEGATIVES = [
    "BP\u00a0120/80, HR\u00a072, SpO2\u00a098% on room air.",
    "Started metoprolol 5\u201310\u00a0mg twice daily; increase to 25\u201350 mg.",
    "Staging T2N0M0, ECOG 1; Gleason 3+4\u2009=\u20097.",
    "Crohn\u2019s disease since 2015; Parkinson\u2019s in the family.",
    "Na 138, K 4.1, WBC 12.3\u2009\u00d7\u200910\u2079/L, platelets 250,000.",
    "Pain 8/10 on arrival, 3/10 after morphine 2\u20134 mg IV.",
    "ICD\u201110 K50.90; CPT 99213.",
    "Walked 2\u00a0blocks down the road without dyspnea.",
    "Heparin, in 10000 units per hour infusion.",
    "Follow\u2011up in 2\u20133 weeks with Cardiology.",
    "Dr.\u00a0visit scheduled; patient education given.",
    "ＢＰ １２０／８０, ＨＲ ７２.",
    "Lisinopril 10\u00a0mg daily, atorvastatin 40\u00a0mg nightly.",
    "Ejection fraction 55\u201360%.",
    "Temp 37.2\u00a0\u00b0C, RR 16.",
    "Lives with her daughter; independent in ADLs.",
    "Dose range 100\u2013200 mg on days 1\u20135.",
    "MMSE 24/30, GCS 15, Apgar 8/9.",
    "Seen in clinic 3 times since 2019\u20132020.",
    "Hb A1c 7.2%\u2009\u2014\u2009improved from 8.1%.",
    "The patient is a 45\u2011year\u2011old man with MS.",
    "Took 2 tablets on the street corner bus stop, no syncope.",
    "Ratio 3:1, times 10:30 and 14:45.",
    "L4\u2013L5 disc bulge; C5\u2013C6 stenosis.",
    "Alert and oriented\u00a0\u00d7\u00a03.",
    # Found on MTSamples while this corpus was built: units and clinical capitals next to
    # what looks like a street suffix or a title.
    "Stress test revealed 2 mm ST segment depression in leads II and III.",
    "HV interval 46 ms.  Sinus node recovery time was normal at 330 ms.",
    "Follow-up 3 view CT scan of the chest; 4 cm\u00a0ST elevation.",
]


def main():
    out = []
    for rule, anchor, value, after, transforms in ITEMS:
        for tname, t in transforms:
            a, v, f = t(anchor), t(value), t(after)
            text = PREFIX + a + v + f + SUFFIX
            start = len((PREFIX + a).encode())
            end = start + len(v.encode())
            # Words of the value that the text around it does not also hold.
            around = set(re.findall(r"\w+", PREFIX + a + f + SUFFIX))
            tokens = [w for w in re.findall(r"\w{2,}", v) if w not in around]
            out.append({"text": text, "rule": rule, "variant": tname, "start": start,
                        "end": end, "tokens": tokens, "prefix": PREFIX, "suffix": SUFFIX})
    with open(f"{OUT}/unicode_variants.jsonl", "w", encoding="utf-8") as fh:
        for o in out:
            fh.write(json.dumps(o, ensure_ascii=False) + "\n")
    with open(f"{OUT}/unicode_negatives.jsonl", "w", encoding="utf-8") as fh:
        for t in NEGATIVES:
            fh.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    rules = sorted({o["rule"] for o in out})
    print(f"{len(out)} variants over {len(rules)} rules, {len(NEGATIVES)} negatives")


if __name__ == "__main__":
    main()
