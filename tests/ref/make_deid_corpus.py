#!/usr/bin/env python3
"""Builds the de-identification gate's test corpus, deterministically (fixed seed):

  tests/data/deid/phi.jsonl     records with planted PHI of every rule, each with ground
                                truth: {"text", "label", "phi": [{"rule", "start", "end",
                                "needle"}]} (byte offsets of the span the rule must flag;
                                "needle" is a string that must not survive redaction nor
                                appear in any output)
  tests/data/deid/clean.jsonl   clinical records with no PHI but full of doses, lab values,
                                blood pressures, scores, years, fractions, eponyms
  tests/data/deid/needles.txt   every needle, one a line (for grep -F -f in shell tests)

Why a generator: the planted formats are varied on purpose (several surface forms per rule,
placed inside realistic clinical sentences), and the corpus can be regenerated and reviewed
instead of being a hand-edited blob. All names, numbers and places are invented.

Run from the repository root: python3 tests/ref/make_deid_corpus.py
(--seed N --out DIR write a variant elsewhere, to check the gate on values it was not
 developed against; the committed corpus uses the default seed.)
"""
import argparse
import json
import os
import random

SEED = 20261121
N_PHI = 130
N_CLEAN = 150
OUT = "tests/data/deid"

FIRST = ["Jane", "John", "Maria", "Robert", "Aisha", "Wei", "Olga", "Samuel", "Priya",
         "Thomas", "Fatima", "Lucas", "Grace", "Dmitri", "Hannah", "Carlos", "Mei", "Noah",
         "Ingrid", "Kwame", "Zoë", "José", "Elena", "Patrick", "Yusuf"]
LAST = ["Roe", "Doe", "Okafor", "Lindqvist", "Nakamura", "Hernandez", "Kowalski", "Brennan",
        "Abernathy", "Castellano", "Whitfield", "Osei", "Van Der Berg", "O'Donnell",
        "McAllister", "Petrovic", "Haddad", "Sorensen", "Tremblay", "Müller", "García",
        "Fitzgerald", "Delacroix", "Ashworth", "Quintero",
        # surnames that are also eponyms: the gate must not let them through as "medical"
        "Murphy", "Wilson", "Baker", "Allen", "Bell"]
CITIES = [("Springfield", "IL"), ("Boston", "MA"), ("Dayton", "OH"), ("Fresno", "CA"),
          ("Tacoma", "WA"), ("Albany", "NY"), ("Tulsa", "OK"), ("Eugene", "OR"),
          ("Macon", "GA"), ("Provo", "UT")]
STREETS = ["Main", "Oak", "Elm", "Maple", "Cedar", "Washington", "Lincoln", "Lakeview",
           "Pine Ridge", "Hawthorne"]
SUFFIXES = ["Street", "St.", "Avenue", "Ave", "Road", "Rd.", "Boulevard", "Lane", "Drive",
            "Court", "Way", "Place"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
MON3 = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
ORD = {1: "1st", 2: "2nd", 3: "3rd", 21: "21st", 22: "22nd", 23: "23rd", 31: "31st"}

R = random.Random(SEED)


def ordinal(d):
    return ORD.get(d, "%dth" % d)


def digits(n):
    return "".join(R.choice("0123456789") for _ in range(n))


def phone_digits():
    return "%d%s" % (R.randint(2, 9), digits(2)), "%d%s" % (R.randint(2, 9), digits(2)), digits(4)


# ---------------------------------------------------------------- clinical filler

def clean_sentence():
    """One PHI-free clinical sentence with numbers, doses, labs, years and eponyms."""
    c = R.choice
    ri = R.randint
    f1 = lambda a, b: "%.1f" % R.uniform(a, b)
    templates = [
        lambda: "Blood pressure %d/%d, heart rate %d, respiratory rate %d, SpO2 %d%% on room air." % (ri(100, 170), ri(60, 100), ri(55, 115), ri(12, 24), ri(88, 100)),
        lambda: "Labs: WBC %s, Hgb %s, platelets %d,000, Na %d, K %s, Cl %d, creatinine %s." % (f1(3, 18), f1(8, 16), ri(120, 420), ri(128, 146), f1(3.1, 5.6), ri(96, 110), f1(0.6, 3.2)),
        lambda: "Started %s %d mg %s." % (c(["metformin", "lisinopril", "atorvastatin", "amoxicillin", "levetiracetam", "sertraline"]), c([5, 10, 20, 40, 250, 500, 850, 1000]), c(["daily", "twice daily", "at bedtime", "every 8 hours"])),
        lambda: "Give %s mL of amoxicillin suspension every 12 hours for %d days." % (f1(1.5, 10), ri(5, 14)),
        lambda: "She has a history of %s diagnosed in %d." % (c(["Crohn's disease", "Parkinson's disease", "Hodgkin lymphoma", "Graves' disease", "Hashimoto thyroiditis", "Barrett's esophagus"]), ri(1985, 2022)),
        lambda: "Known %s since %d, followed in the clinic." % (c(["Parkinson's disease", "Crohn's disease", "multiple sclerosis", "Alzheimer's dementia", "Cushing's syndrome"]), ri(1990, 2023)),
        lambda: "Hodgkin lymphoma stage %s treated with %d cycles of ABVD between %d and %d." % (c(["IIA", "IIB", "IIIA"]), ri(4, 6), ri(2005, 2012), ri(2013, 2016)),
        lambda: "Apgar scores %d and %d at 1 and 5 minutes; birth weight %d g." % (ri(6, 9), ri(8, 10), ri(2500, 4200)),
        lambda: "Glasgow Coma Scale %d, pupils equal and reactive, Babinski sign %s." % (ri(9, 15), c(["negative", "absent bilaterally", "equivocal"])),
        lambda: "A %d French Foley catheter was placed with return of %d mL of clear urine." % (c([14, 16, 18]), ri(150, 900)),
        lambda: "Take 1/2 tablet by mouth at night; pain %d/10, improved from %d/10." % (ri(1, 5), ri(6, 10)),
        lambda: "Strength %d/5 in the upper extremities, %d+ reflexes, grade %d/6 systolic murmur." % (ri(3, 5), ri(1, 3), ri(1, 4)),
        lambda: "Ejection fraction %d-%d%%, LDL %d mg/dL, A1c %s%%, TSH %s." % (ri(30, 55), ri(56, 65), ri(70, 190), f1(5.2, 11.5), f1(0.3, 6.0)),
        lambda: "INR %s on warfarin %s mg; Dr. visit scheduled to review the dose." % (f1(1.1, 3.9), c(["2.5", "5", "7.5"])),
        lambda: "Patient Education: reviewed %s and return precautions." % c(["diet", "inhaler technique", "insulin injection", "wound care"]),
        lambda: "Patient tolerated the procedure well; estimated blood loss %d mL." % ri(5, 400),
        lambda: "Mother: Hypertension. Father: Type 2 diabetes. Sister: Asthma.",
        lambda: "Family history: mother with Alzheimer's disease at %d, father with Parkinson's." % ri(60, 85),
        lambda: "He lives alone and walks %d blocks; quit smoking in %d after %d pack-years." % (ri(1, 12), ri(1995, 2022), ri(5, 60)),
        lambda: "This %d-year-old %s presents with %s." % (ri(18, 88), c(["man", "woman"]), c(["chest pain", "cough", "abdominal pain", "headache", "dizziness"])),
        lambda: "Positive Murphy's sign, McBurney's point nontender, negative Homans' sign.",
        lambda: "Lachman test negative, Tinel's and Phalen's signs positive at the right wrist.",
        lambda: "Bell's palsy resolved; Romberg negative; Trendelenburg gait absent.",
        lambda: "Swan-Ganz catheter readings: PCWP %d mmHg, cardiac index %s." % (ri(8, 30), f1(1.6, 3.8)),
        lambda: "Status post Whipple procedure in %d and Nissen fundoplication in %d." % (ri(1998, 2010), ri(2011, 2022)),
        lambda: "Epley maneuver performed; Dix-Hallpike positive on the right.",
        lambda: "Holter monitor showed %d PVCs per hour; Wolff-Parkinson-White pattern excluded." % ri(1, 40),
        lambda: "Guillain-Barre syndrome was considered; Epstein-Barr virus serology negative.",
        lambda: "ICD-10 K50.90, CPT %d; follow up in %d-%d weeks." % (ri(99202, 99215), ri(1, 3), ri(4, 8)),
        lambda: "Normal saline 0.9%% at %d mL/hr, then insulin %d units subcutaneously." % (ri(50, 200), ri(2, 20)),
        lambda: "Lasix %d mg IV given at %02d:%02d with %d mL urine output." % (c([20, 40, 80]), ri(0, 23), ri(0, 59), ri(200, 1500)),
        lambda: "BMI %s, weight %s kg, height %d cm, temperature %s F." % (f1(18, 42), f1(45, 140), ri(150, 195), f1(97.0, 102.5)),
        lambda: "MRI showed L%d-L%d disc herniation and C5-C6 foraminal narrowing." % ((lambda a: (a, a + 1))(ri(2, 4))),
        lambda: "Gleason score 3+4=7, PSA %s; BI-RADS %d on mammogram." % (f1(2, 20), ri(1, 5)),
        lambda: "PHQ-9 score %d, MMSE %d/30, CHA2DS2-VASc score %d." % (ri(0, 27), ri(14, 30), ri(0, 7)),
        lambda: "NYHA class %s, ASA class %d, Mallampati %s." % (c(["I", "II", "III"]), ri(1, 4), c(["I", "II", "III"])),
        lambda: "Tumor staged T%dN%dM0, stage IIIA per the %d guidelines." % (ri(1, 4), ri(0, 2), c([2010, 2017, 2018])),
        lambda: "Per ACC/AHA %d guidelines, continue aspirin 81 mg and high-intensity statin." % c([2013, 2017, 2019]),
        lambda: "G%dP%d, %d weeks by ultrasound, fetal heart rate %d." % (ri(1, 5), ri(0, 4), ri(8, 40), ri(110, 160)),
        lambda: "A %d x %d cm wound was irrigated with %d mL and closed with %d-0 nylon." % (ri(1, 9), ri(1, 6), ri(100, 1000), ri(3, 6)),
        lambda: "Phone follow-up in %d days; call if fever above 101.5 F." % ri(2, 10),
        lambda: "The doctor reviewed the x-ray; ratio 1:1 mix given at 0800." ,
        lambda: "Her son is at the bedside and his wife was updated by telephone.",
        lambda: "MS flare treated with methylprednisolone 1 g IV daily for %d days." % ri(3, 5),
        lambda: "Down syndrome with atrioventricular canal repaired in %d." % ri(1990, 2015),
        lambda: "Patient Active Problem List reviewed; Kawasaki disease in childhood.",
        lambda: "Taking into account %d risk factors, the Wells score is %s." % (ri(2, 4), f1(0, 7)),
        lambda: "Hepatitis B vaccine series completed in %d; titer %d mIU/mL." % (ri(2000, 2020), ri(10, 900)),
        lambda: "Drug Name: Lisinopril. Dose: %d mg. Route: oral." % c([10, 20, 40]),
        lambda: "Seen in the Operating Suite 3 for an uncomplicated cholecystectomy.",
        lambda: "Vitamin D %d ng/mL, B12 %d pg/mL, ferritin %d ng/mL, iron saturation %d%%." % (ri(8, 60), ri(150, 900), ri(5, 400), ri(5, 50)),
        lambda: "Troponin %s ng/mL at 0 and 3 hours; 12-lead ECG with no ST changes." % f1(0.0, 0.9),
        lambda: "The 2019-2020 influenza vaccine was given; next dose due in %d months." % ri(6, 12),
    ]
    return c(templates)()


# ---------------------------------------------------------------- planted PHI

def plant_name():
    fn, ln = R.choice(FIRST), R.choice(LAST)
    mi = R.choice("ABCDEFGHJKLMNPRSTW")
    forms = [
        ("Seen today by Dr. {v} in clinic.", ln),
        ("Referred by Dr {v} for evaluation.", ln),
        ("Mr. {v} is a 54-year-old man with cough.", "%s %s" % (fn, ln)),
        ("Mrs. {v} reports improvement.", ln),
        ("Ms. {v} was counseled on diet.", "%s %s" % (fn, ln)),
        ("Discussed with Miss {v} at the bedside.", ln),
        ("Patient {v} was admitted for chest pain.", "%s %s" % (fn, ln)),
        ("The patient, {v}, denies fever.", "%s %s" % (fn, ln)),
        ("Pt. named {v} arrived by ambulance.", fn),
        ("Patient Name: {v}", "%s %s" % (fn, ln)),
        ("Name: {v}", "%s, %s" % (ln, fn)),
        ("Electronically signed by: {v}, MD", "%s %s" % (fn, ln)),
        ("{v}, M.D., attending physician.", "%s %s. %s" % (fn, mi, ln)),
        ("Dictated by: {v}", "%s %s" % (fn, ln)),
        ("Her husband {v} provided the history.", fn),
        ("His daughter, {v}, is the health care proxy.", "%s %s" % (fn, ln)),
        ("Sincerely,\n{v}", "%s %s" % (fn, ln)),
        ("Case discussed with Doctor {v} from surgery.", ln),
    ]
    tmpl, v = R.choice(forms)
    return tmpl, v, "NAME", None


def plant_date():
    y, m, d = R.randint(1950, 2024), R.randint(1, 12), R.randint(1, 28)
    forms = [
        ("Admitted on {v} with dyspnea.", "%02d/%02d/%d" % (m, d, y)),
        ("Last colonoscopy {v}, normal.", "%d/%d/%02d" % (m, d, y % 100)),
        ("Surgery performed {v}.", "%d-%02d-%02d" % (y, m, d)),
        ("Discharged {v} in stable condition.", "%s %d, %d" % (MONTHS[m - 1], d, y)),
        ("Seen {v} for follow-up.", "%s. %d, %d" % (MON3[m - 1], d, y) if MON3[m - 1] != "May" else "May %d, %d" % (d, y)),
        ("MRI on {v} showed no change.", "%d %s %d" % (d, MON3[m - 1], y)),
        ("Symptoms began on the {v}.", "%s of %s" % (ordinal(d), MONTHS[m - 1])),
        ("Chemotherapy started in {v}.", "%s %d" % (MONTHS[m - 1], y)),
        ("DOB: {v}", "%02d/%02d/%d" % (m, d, y)),
        ("Echo dated {v} showed EF 55%.", "%02d-%02d-%d" % (m, d, y)),
        ("Follow-up visit {v}.", "%s %s" % (MONTHS[m - 1], ordinal(d))),
        ("Labs drawn on {v}.", "%d/%d" % (m, d)),
    ]
    tmpl, v = R.choice(forms)
    return tmpl, v, "DATE", None


def plant_phone():
    a, b, c = phone_digits()
    forms = [
        ("Call the clinic at {v} with questions.", "(%s) %s-%s" % (a, b, c)),
        ("Cell: {v}", "%s-%s-%s" % (a, b, c)),
        ("Contact number {v} (home).", "%s.%s.%s" % (a, b, c)),
        ("Daughter can be reached at {v}.", "+1 %s %s %s" % (a, b, c)),
        ("Nurse line {v}.", "1-800-%s-%s" % (b, c)),
        ("Phone {v}, ext. 204.", "%s %s %s" % (a, b, c)),
        ("Pager {v}.", "%s-%s" % (b, c)),
        ("Tel: {v} x12", "(%s)%s-%s" % (a, b, c)),
    ]
    tmpl, v = R.choice(forms)
    return tmpl, v, "PHONE", None


def plant_fax():
    a, b, c = phone_digits()
    forms = [
        ("Fax: {v}", "(%s) %s-%s" % (a, b, c)),
        ("Records faxed to {v} today.", "%s-%s-%s" % (a, b, c)),
        ("Fax number {v}.", "%s.%s.%s" % (a, b, c)),
        ("Please send the report by fax to {v}.", "%s-%s-%s" % (a, b, c)),
    ]
    tmpl, v = R.choice(forms)
    return tmpl, v, "FAX", None


def plant_email():
    fn, ln = R.choice(FIRST).lower(), R.choice(LAST).lower().replace(" ", "").replace("'", "")
    fn = fn.replace("ë", "e").replace("é", "e")
    ln = ln.replace("ü", "u").replace("í", "i")
    dom = R.choice(["example.com", "mail.example.org", "clinic-example.net", "uni.example.edu"])
    v = R.choice(["%s.%s@%s", "%s_%s@%s", "%s%s@%s"]) % (fn, ln, dom)
    tmpl = R.choice(["Send results to {v}.", "Patient e-mail: {v}", "Contact {v} for the images."])
    return tmpl, v, "EMAIL", None


def plant_ssn():
    a, b, c = "%03d" % R.randint(100, 899), "%02d" % R.randint(10, 99), "%04d" % R.randint(1000, 9999)
    forms = [("SSN {v} on file.", "%s-%s-%s" % (a, b, c)),
             ("Social security number: {v}", "%s%s%s" % (a, b, c)),
             ("Insurance verified, {v}.", "%s-%s-%s" % (a, b, c)),
             ("SSN: {v}", "%s %s %s" % (a, b, c))]
    tmpl, v = R.choice(forms)
    return tmpl, v, "SSN", None


def plant_mrn():
    forms = [("MRN: {v}", digits(7)), ("MRN {v}", "00" + digits(6)), ("MR# {v}", digits(6)),
             ("Medical record number: {v}", "A" + digits(7)), ("Patient ID: {v}", digits(8)),
             ("Chart # {v} reviewed.", digits(6)), ("MRN{v}", digits(7))]
    tmpl, v = R.choice(forms)
    return tmpl, v, "MRN", None


def plant_account():
    forms = [("Acct #: {v}", digits(8)), ("Account number {v}.", digits(10)),
             ("Acct. {v}", digits(9)), ("Policy number: {v}", "XJ" + digits(7)),
             ("Member ID: {v}", "W" + digits(9)), ("Billing #: {v}", digits(6)),
             ("Claim number {v} submitted.", digits(5) + "-" + digits(5))]
    tmpl, v = R.choice(forms)
    return tmpl, v, "ACCOUNT", None


def plant_url():
    forms = [("Results at {v} for review.", "https://portal.example-hospital.org/patient/%s" % digits(5)),
             ("See {v} for instructions.", "www.example-clinic.com/%s" % R.choice(["care", "visit", "notes"])),
             ("Log in to {v} to message the team.", "mychart.example-health.org"),
             ("Image stored at {v}", "http://pacs.example.net/study?id=%s" % digits(6))]
    tmpl, v = R.choice(forms)
    return tmpl, v, "URL", None


def plant_ip():
    forms = [("Device connected from {v}.", "192.168.%d.%d" % (R.randint(0, 255), R.randint(1, 254))),
             ("Telemetry gateway {v} offline.", "10.%d.%d.%d" % (R.randint(0, 255), R.randint(0, 255), R.randint(1, 254))),
             ("Pump reported from {v}.", "2001:db8:%x::%x:%x" % (R.randint(1, 0xffff), R.randint(1, 0xffff), R.randint(1, 0xffff))),
             ("Host {v} logged the session.", "fe80::%x:%x:%x:%x" % tuple(R.randint(1, 0xffff) for _ in range(4)))]
    tmpl, v = R.choice(forms)
    return tmpl, v, "IP", None


def plant_address():
    n = R.randint(1, 9999)
    forms = [("Lives at {v} with her son.", "%d %s %s" % (n, R.choice(STREETS), R.choice(SUFFIXES))),
             ("Home address {v}.", "%d N. %s %s" % (n, R.choice(STREETS), R.choice(SUFFIXES))),
             ("Moved to {v} last spring.", "%d West %dth Street" % (n, R.randint(4, 99))),
             ("Address: 45 Elm Court, {v}", "Apt %d%s" % (R.randint(1, 40), R.choice("ABCD"))),
             ("Mail to {v}.", "P.O. Box %d" % R.randint(100, 99999)),
             ("Office at {v}, second floor.", "Suite %d" % R.randint(100, 990)),
             ("She lives in {v} with her husband.", R.choice(["Lake Forest", "Bakersfield", "Fort Collins", "Marblehead"])),
             ]
    tmpl, v = R.choice(forms)
    return tmpl, v, "ADDRESS", None


def plant_zip():
    city, st = R.choice(CITIES)
    z = "%05d" % R.randint(1000, 99950)
    forms = [("Address: 12 Oak Lane, {city}, {st} {v}", z),
             ("Moved from {city}, {st} {v} in the fall.", z + "-" + digits(4)),
             ("ZIP code {v}.", z), ("zip: {v}", z)]
    tmpl, v = R.choice(forms)
    tmpl = tmpl.replace("{city}", city).replace("{st}", st)
    extra = None
    if "{v}" in tmpl and city in tmpl:
        extra = ("ADDRESS", "%s, %s" % (city, st))
    return tmpl, v, "ZIP", extra


def plant_age():
    a = R.randint(90, 105)
    forms = [("A {v}-year-old woman with dyspnea.", str(a), "%d-year-old" % a),
             ("The patient is {v} years old.", str(a), "%d years old" % a),
             ("Patient aged {v} with hip fracture.", str(a), "aged %d" % a),
             ("At age {v} she still lives alone.", str(a), "age %d" % a),
             ("{v} y/o male, fall at home.", str(a), "%d y/o" % a),
             ("{v}yo F with confusion.", str(a), "%dyo" % a),
             ("He is {v} years of age.", str(a), "%d years of age" % a),
             ("A {v}-year-old man.", "ninety-%s" % R.choice(["one", "two", "three", "four", "five"]), None)]
    tmpl, v, needle = R.choice(forms)
    if needle is None:
        needle = v + "-year-old"
    return tmpl, v, "AGE_OVER_89", ("needle", needle)


PLANTERS = [plant_name, plant_date, plant_phone, plant_fax, plant_email, plant_ssn, plant_mrn,
            plant_account, plant_url, plant_ip, plant_address, plant_zip, plant_age]


def build_phi_record(i):
    # Every rule appears often: cycle through them, then add one or two random others.
    planters = [PLANTERS[i % len(PLANTERS)]] + [R.choice(PLANTERS) for _ in range(R.randint(0, 2))]
    parts, phi = [], []
    pos = 0

    def add_text(s):
        nonlocal pos
        parts.append(s)
        pos += len(s.encode("utf-8"))

    add_text(clean_sentence() + " ")
    for p in planters:
        tmpl, v, rule, extra = p()
        pre, post = tmpl.split("{v}")
        needle = v
        # A one-word name can also be an eponym elsewhere in the note ("Doctor Murphy" vs
        # "Murphy's sign"): its needle carries the word before it.
        if rule == "NAME" and " " not in v and pre.endswith(" "):
            needle = pre.split()[-1] + " " + v
        if extra and extra[0] == "needle":
            needle = extra[1]
        if extra and extra[0] == "ADDRESS":
            a_pre, a_rest = pre.split(extra[1])
            start_a = pos + len(a_pre.encode("utf-8"))
            phi.append({"rule": "ADDRESS", "start": start_a,
                        "end": start_a + len(extra[1].encode("utf-8")), "needle": extra[1]})
        add_text(pre)
        start = pos
        add_text(v)
        phi.append({"rule": rule, "start": start, "end": pos, "needle": needle})
        add_text(post + " " + clean_sentence() + " ")
    text = "".join(parts).rstrip()
    label = R.choice(["cardiology", "neurology", "gastroenterology", "pulmonology"])
    return {"text": text, "label": label, "phi": phi}


def main():
    global OUT, R
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    OUT = args.out
    R = random.Random(args.seed)
    os.makedirs(OUT, exist_ok=True)
    needles = set()
    with open(os.path.join(OUT, "phi.jsonl"), "w", encoding="utf-8") as f:
        for i in range(N_PHI):
            rec = build_phi_record(i)
            b = rec["text"].encode("utf-8")
            for p in rec["phi"]:
                assert p["needle"].encode("utf-8") in b, p
                needles.add(p["needle"])
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "clean.jsonl"), "w", encoding="utf-8") as f:
        for i in range(N_CLEAN):
            text = " ".join(clean_sentence() for _ in range(R.randint(3, 6)))
            label = R.choice(["cardiology", "neurology", "gastroenterology", "pulmonology"])
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "needles.txt"), "w", encoding="utf-8") as f:
        for n in sorted(needles):
            f.write(n.replace("\n", " ") + "\n")


if __name__ == "__main__":
    main()
