/* Synthetic clinical note generator and `medfl-node synth`. Vocabulary per specialty is
 * deliberately overlapping (fatigue, shortness of breath, swelling, numbness, itching,
 * weight loss appear under several labels), the assessment naming the diagnosis appears in
 * only part of the notes, and every note carries distractors: past history and home
 * medications from other specialties and negated symptoms of other specialties. A bag of
 * single keywords therefore does not separate the labels well; combinations do.
 *
 * Templates may contain {lo-hi} (a number drawn uniformly, with as many decimals as lo)
 * and {a|b|c} (one choice), expanded with the note's rng so that output is a pure function
 * of the seed. */
#include "node/synth.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "node/commands.h"
#include "node/node_config.h"

/* ---------------------------------------------------------------- vocabulary */

typedef struct {
    const char *name;
    const char *symptoms[12];
    const char *findings[10];
    const char *tests[10];
    const char *meds[10];
    const char *dx[9];
} s_specialty_t;

static const s_specialty_t s_spec[] = {
    {"cardiology",
     {"chest pain radiating to the left arm", "exertional chest pressure", "palpitations",
      "shortness of breath on exertion", "orthopnea", "waking up at night short of breath",
      "lightheadedness", "an episode of syncope", "lower extremity swelling", "fatigue", NULL},
     {"an irregularly irregular rhythm", "a grade {2|3|4}/6 systolic murmur at the right upper sternal border",
      "jugular venous distension", "bibasilar crackles", "pitting edema of both ankles",
      "an S3 gallop", "diminished distal pulses", NULL},
     {"troponin {0.04-2.50} ng/mL", "BNP {400-2400} pg/mL",
      "ECG showing ST depression in the lateral leads",
      "ECG with atrial fibrillation and rapid ventricular response",
      "echocardiogram with ejection fraction {20-40}%", "LDL {130-210} mg/dL",
      "stress test positive for inducible ischemia", NULL},
     {"metoprolol {25|50|100} mg twice daily", "atorvastatin {40|80} mg nightly",
      "aspirin 81 mg daily", "lisinopril {10|20} mg daily", "furosemide {20|40} mg daily",
      "apixaban 5 mg twice daily", "nitroglycerin as needed", NULL},
     {"unstable angina", "congestive heart failure with reduced ejection fraction",
      "atrial fibrillation", "aortic stenosis", "non-ST elevation myocardial infarction",
      "hypertensive heart disease", NULL}},
    {"pulmonology",
     {"chronic productive cough", "wheezing", "shortness of breath", "coughing up blood",
      "pleuritic chest pain", "night sweats", "snoring with witnessed apneas", "fatigue",
      "exercise intolerance", NULL},
     {"diffuse expiratory wheezes", "decreased breath sounds at the right base",
      "dullness to percussion", "a prolonged expiratory phase",
      "oxygen saturation {84-91}% on room air", "digital clubbing", "coarse rhonchi", NULL},
     {"FEV1/FVC ratio of {0.45-0.68}", "chest x-ray with a right lower lobe infiltrate",
      "CT chest showing a {8-30} mm spiculated nodule", "arterial blood gas with pCO2 {48-65}",
      "sleep study with AHI of {18-60}", "sputum culture growing Streptococcus pneumoniae",
      NULL},
     {"albuterol inhaler as needed", "tiotropium 18 mcg daily",
      "fluticasone-salmeterol 250/50 one puff twice daily", "prednisone {20|40} mg taper",
      "azithromycin 250 mg daily", "home oxygen at {2|3} L", "CPAP at {8-14} cm H2O", NULL},
     {"COPD exacerbation", "community-acquired pneumonia", "asthma, moderate persistent",
      "obstructive sleep apnea", "pulmonary nodule", "interstitial lung disease", NULL}},
    {"gastroenterology",
     {"epigastric pain", "heartburn after meals", "nausea and vomiting", "bloody diarrhea",
      "black tarry stools", "difficulty swallowing solids", "abdominal bloating",
      "unintentional weight loss", "right upper quadrant pain after fatty meals", "fatigue",
      NULL},
     {"epigastric tenderness", "hepatomegaly", "scleral icterus", "hyperactive bowel sounds",
      "a positive Murphy sign", "guaiac-positive stool",
      "abdominal distension with shifting dullness", NULL},
     {"ALT {80-400} U/L", "lipase {300-2000} U/L", "total bilirubin {2.1-8.0} mg/dL",
      "hemoglobin {7.1-10.5} g/dL", "colonoscopy with patchy ulceration of the terminal ileum",
      "upper endoscopy showing Barrett esophagus", "ultrasound with gallstones and wall thickening",
      "fecal calprotectin {250-900} mcg/g", NULL},
     {"omeprazole 40 mg daily", "pantoprazole 40 mg twice daily", "mesalamine 1.2 g daily",
      "ondansetron 4 mg as needed", "lactulose 20 g twice daily", "infliximab infusions",
      "ursodiol 300 mg twice daily", NULL},
     {"Crohn's disease flare", "peptic ulcer disease", "acute pancreatitis",
      "gastroesophageal reflux disease", "ulcerative colitis", "cirrhosis with ascites",
      "acute cholecystitis", NULL}},
    {"neurology",
     {"throbbing one-sided headaches with light sensitivity",
      "episodes of loss of consciousness with tongue biting", "tremor at rest",
      "numbness and tingling", "slurred speech", "facial droop", "unsteady gait",
      "memory loss", "double vision", "dizziness", NULL},
     {"a resting pill-rolling tremor", "cogwheel rigidity", "a positive Babinski sign",
      "left-sided weakness {2|3|4}/5", "decreased sensation in a stocking distribution",
      "nystagmus", "a positive Romberg test", "Glasgow Coma Scale {9-14}", NULL},
     {"MRI brain with periventricular white matter lesions",
      "EEG with generalized spike-and-wave discharges", "CT head negative for hemorrhage",
      "lumbar puncture with oligoclonal bands",
      "nerve conduction studies showing axonal neuropathy", "MoCA score {14-24}/30", NULL},
     {"levetiracetam {500|750|1000} mg twice daily", "carbidopa-levodopa 25/100 three times daily",
      "sumatriptan 50 mg as needed", "topiramate {25|50} mg daily", "donepezil 10 mg nightly",
      "gabapentin {300|600} mg three times daily", NULL},
     {"Parkinson's disease", "migraine without aura", "generalized epilepsy",
      "acute ischemic stroke", "multiple sclerosis", "Alzheimer's dementia",
      "peripheral neuropathy", NULL}},
    {"orthopedics",
     {"knee pain after a twisting injury", "low back pain radiating down the leg",
      "shoulder pain with overhead activity", "hip pain with weight bearing",
      "swelling of the ankle after a fall", "wrist pain after a fall on an outstretched hand",
      "stiffness", "locking of the knee", "numbness and tingling", NULL},
     {"a positive Lachman test", "a positive McMurray test",
      "tenderness over the anatomic snuffbox", "limited range of motion",
      "a positive straight leg raise at {30-60} degrees", "a joint effusion", "crepitus",
      "point tenderness over the lateral malleolus", NULL},
     {"x-ray showing a displaced distal radius fracture", "MRI knee with a medial meniscus tear",
      "MRI lumbar spine with L4-L5 disc herniation", "x-ray with joint space narrowing",
      "DEXA T-score of -{2.5-3.5}", NULL},
     {"ibuprofen 600 mg three times daily", "naproxen 500 mg twice daily",
      "acetaminophen 1 g as needed", "cyclobenzaprine 10 mg nightly",
      "a corticosteroid injection", "physical therapy twice weekly", "a short arm cast", NULL},
     {"ACL tear", "lumbar radiculopathy", "rotator cuff tendinopathy",
      "osteoarthritis of the hip", "distal radius fracture", "ankle sprain", "osteoporosis",
      NULL}},
    {"endocrinology",
     {"increased urination and thirst", "unintentional weight loss", "heat intolerance",
      "cold intolerance", "fatigue", "palpitations", "blurred vision", "numbness and tingling",
      "weight gain", "hair thinning", NULL},
     {"a diffusely enlarged thyroid", "a fine tremor of the outstretched hands",
      "acanthosis nigricans", "proptosis", "decreased sensation to monofilament", "dry skin",
      "delayed relaxation of reflexes", NULL},
     {"hemoglobin A1c {7.5-12.9}%", "fasting glucose {150-390} mg/dL", "TSH {0.01-0.09} mIU/L",
      "TSH {8.5-45.0} mIU/L", "free T4 {2.1-4.5} ng/dL", "morning cortisol {1.2-3.5} mcg/dL",
      "calcium {10.8-12.5} mg/dL with elevated PTH", NULL},
     {"metformin {500|1000} mg twice daily", "insulin glargine {10-40} units nightly",
      "levothyroxine {50|75|100} mcg daily", "methimazole {5|10} mg daily",
      "semaglutide 0.5 mg weekly", "hydrocortisone 20 mg daily", NULL},
     {"type 2 diabetes mellitus, uncontrolled", "Graves' disease", "hypothyroidism",
      "primary hyperparathyroidism", "adrenal insufficiency",
      "diabetic peripheral neuropathy", NULL}},
    {"nephrology",
     {"decreased urine output", "lower extremity swelling", "foamy urine", "flank pain",
      "fatigue", "nausea", "itching", "shortness of breath", "confusion", NULL},
     {"pitting edema to the knees", "periorbital edema", "costovertebral angle tenderness",
      "a uremic odor", "an arteriovenous fistula with a good thrill",
      "blood pressure {160-190}/{95-110}", NULL},
     {"creatinine {1.9-6.8} mg/dL", "eGFR {12-44} mL/min", "potassium {5.6-6.8} mmol/L",
      "urine protein-to-creatinine ratio {3.1-9.0} g/g", "BUN {45-110} mg/dL",
      "renal ultrasound with small echogenic kidneys", "urinalysis with red cell casts",
      "bicarbonate {14-19} mmol/L", NULL},
     {"sevelamer 800 mg with meals", "calcitriol 0.25 mcg daily",
      "sodium bicarbonate 650 mg twice daily", "furosemide 80 mg twice daily",
      "losartan {50|100} mg daily", "epoetin alfa weekly", "hemodialysis three times weekly",
      NULL},
     {"chronic kidney disease stage 4", "acute kidney injury", "nephrotic syndrome",
      "hyperkalemia", "end-stage renal disease on hemodialysis", "IgA nephropathy", NULL}},
    {"dermatology",
     {"an itchy rash", "a changing mole", "scaly plaques", "hair loss", "blistering",
      "a non-healing sore", "facial redness", "itching", "dry skin", NULL},
     {"well-demarcated erythematous plaques with silvery scale on the elbows",
      "an asymmetric pigmented lesion of {6-14} mm with irregular borders",
      "a pearly papule with telangiectasias", "comedones and inflammatory papules",
      "vesicles in a dermatomal distribution", "lichenified patches in the flexural areas",
      "tense bullae on the trunk", NULL},
     {"shave biopsy showing basal cell carcinoma", "punch biopsy with spongiotic dermatitis",
      "KOH prep positive for hyphae", "dermoscopy with an atypical network",
      "patch testing positive for nickel", NULL},
     {"triamcinolone 0.1% cream twice daily", "clobetasol ointment twice daily",
      "tretinoin 0.025% cream nightly", "doxycycline 100 mg twice daily",
      "valacyclovir 1 g three times daily", "methotrexate 15 mg weekly",
      "dupilumab injections every two weeks", NULL},
     {"plaque psoriasis", "atopic dermatitis", "basal cell carcinoma", "acne vulgaris",
      "herpes zoster", "bullous pemphigoid", "melanoma in situ", NULL}},
};
#define S_N_LABELS (sizeof s_spec / sizeof s_spec[0])

static const char *s_label_names[S_N_LABELS];

/* Past history shared by all labels: frequent comorbidities, several of which belong to
 * another label's territory (distractors). */
static const char *const s_pmh[] = {
    "hypertension", "hyperlipidemia", "type 2 diabetes", "GERD", "osteoarthritis", "asthma",
    "depression", "obesity", "hypothyroidism", "chronic kidney disease stage 2",
    "paroxysmal atrial fibrillation", "migraines", "eczema", "anxiety", "gout",
    "benign prostatic hyperplasia", "anemia", "sleep apnea", "remote appendectomy",
    "tobacco use, {10-40} pack-years", NULL};

static const char *const s_fillers[] = {
    "The patient was counseled regarding the diagnosis and treatment options.",
    "Questions were answered and the patient agrees with the plan.",
    "Return precautions were reviewed in detail.",
    "Medication reconciliation was completed.",
    "Lifestyle modification including diet and exercise was discussed.",
    "Smoking cessation was encouraged.",
    "The patient lives with family and is independent in daily activities.",
    "Follow up in {2-8} weeks or sooner if symptoms worsen.",
    "Labs will be repeated at the next visit.",
    "Prior records were reviewed.",
    NULL};

static size_t s_count(const char *const *list)
{
    size_t n = 0;
    while (list[n]) n++;
    return n;
}

const char *const *synth_labels(size_t *n_out)
{
    for (size_t i = 0; i < S_N_LABELS; i++) s_label_names[i] = s_spec[i].name;
    *n_out = S_N_LABELS;
    return s_label_names;
}

/* ---------------------------------------------------------------- string builder */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} s_sb_t;

static void s_sb_put(s_sb_t *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void s_sb_str(s_sb_t *b, const char *s) { s_sb_put(b, s, strlen(s)); }

static void s_sb_printf(s_sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_sb_printf(s_sb_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) s_sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Expands {lo-hi} and {a|b|c} in a template. */
static void s_fill(s_sb_t *b, uint64_t *rng, const char *t)
{
    while (*t) {
        const char *open = strchr(t, '{');
        if (!open) { s_sb_str(b, t); return; }
        s_sb_put(b, t, (size_t)(open - t));
        const char *close = strchr(open, '}');
        if (!close) { s_sb_str(b, open); return; }
        char body[64];
        size_t n = (size_t)(close - open - 1);
        if (n >= sizeof body) n = sizeof body - 1;
        memcpy(body, open + 1, n);
        body[n] = '\0';
        if (strchr(body, '|')) {
            size_t parts = 1;
            for (char *c = body; *c; c++) if (*c == '|') parts++;
            size_t pick = data_rng_below(rng, (uint32_t)parts);
            char *start = body;
            for (size_t k = 0; k < pick; k++) start = strchr(start, '|') + 1;
            char *end = strchr(start, '|');
            s_sb_put(b, start, end ? (size_t)(end - start) : strlen(start));
        } else {
            char *dash = strchr(body + 1, '-');
            double lo = atof(body), hi = dash ? atof(dash + 1) : lo;
            const char *dot = strchr(body, '.');
            int decimals = dot && (!dash || dot < dash) ? (int)(dash ? dash - dot - 1 : 0) : 0;
            double v = lo + data_rng_uniform(rng) * (hi - lo);
            if (decimals == 0) v = floor(lo + data_rng_uniform(rng) * (hi - lo + 1));
            if (v > hi) v = hi;
            s_sb_printf(b, "%.*f", decimals, v);
        }
        t = close + 1;
    }
}

static const char *s_pick(uint64_t *rng, const char *const *list)
{
    return list[data_rng_below(rng, (uint32_t)s_count(list))];
}

/* k distinct picks (k <= count) as indices into list, in draw order. */
static size_t s_pick_distinct(uint64_t *rng, const char *const *list, size_t k, size_t *out)
{
    size_t n = s_count(list);
    if (k > n) k = n;
    size_t got = 0;
    while (got < k) {
        size_t c = data_rng_below(rng, (uint32_t)n);
        int dup = 0;
        for (size_t j = 0; j < got; j++) if (out[j] == c) dup = 1;
        if (!dup) out[got++] = c;
    }
    return k;
}

/* Abbreviations that terse writers use; applied to whole words (style 1 and 4). */
static const char *const s_abbrev[][2] = {
    {"shortness of breath", "SOB"}, {"nausea and vomiting", "N/V"}, {"twice daily", "BID"},
    {"three times daily", "TID"}, {"as needed", "PRN"}, {"nightly", "QHS"}, {"daily", "qd"},
    {"blood pressure", "BP"}, {"hypertension", "HTN"}, {"hyperlipidemia", "HLD"},
    {"type 2 diabetes", "T2DM"}, {"lower extremity", "LE"}, {"range of motion", "ROM"},
    {"history of", "h/o"}, {"without", "w/o"}, {"with", "w/"}, {"patient", "pt"},
    {"positive", "(+)"}, {"negative", "(-)"}, {"weeks", "wks"}, {"months", "mos"},
    {"chest pain", "CP"}, {"abdominal", "abd"}, {"bilateral", "b/l"}, {"x-ray", "XR"},
    {"and", "&"}, {NULL, NULL}};

static int s_wordchar(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

static char *s_abbreviate(const char *in, size_t *len_out)
{
    s_sb_t b = {0};
    size_t n = strlen(in);
    for (size_t i = 0; i < n;) {
        int done = 0;
        if (i == 0 || !s_wordchar(in[i - 1])) {
            for (size_t k = 0; s_abbrev[k][0] && !done; k++) {
                size_t L = strlen(s_abbrev[k][0]);
                if (i + L <= n && strncmp(in + i, s_abbrev[k][0], L) == 0 &&
                    (i + L == n || !s_wordchar(in[i + L]))) {
                    s_sb_str(&b, s_abbrev[k][1]);
                    i += L;
                    done = 1;
                }
            }
        }
        if (!done) s_sb_put(&b, in + i++, 1);
    }
    if (b.oom) { free(b.p); return NULL; }
    *len_out = b.len;
    return b.p;
}

/* ---------------------------------------------------------------- one note */

static void s_list(s_sb_t *b, uint64_t *rng, const char *const *list, const size_t *idx,
                   size_t n, const char *sep, const char *last_sep)
{
    for (size_t i = 0; i < n; i++) {
        if (i) s_sb_str(b, i + 1 == n ? last_sep : sep);
        s_fill(b, rng, list[idx[i]]);
    }
}

char *synth_note(uint64_t *rng, int label, int style, size_t *len_out)
{
    if (label < 0 || (size_t)label >= S_N_LABELS) return NULL;
    const s_specialty_t *sp = &s_spec[label];
    /* Another specialty for distractors. */
    int other = (label + 1 + (int)data_rng_below(rng, S_N_LABELS - 1)) % (int)S_N_LABELS;
    const s_specialty_t *ot = &s_spec[other];
    int age = 18 + (int)data_rng_below(rng, 71); /* 18..88: below the AGE_OVER_89 rule */
    const char *sex = data_rng_below(rng, 2) ? "woman" : "man";
    const char *sexs = sex[0] == 'w' ? "F" : "M";
    size_t sym[3], fnd[2], tst[2], med[2], pmh[3], neg[2], fill[3];
    size_t n_sym = s_pick_distinct(rng, sp->symptoms, 2 + data_rng_below(rng, 2), sym);
    size_t n_fnd = s_pick_distinct(rng, sp->findings, 1 + data_rng_below(rng, 2), fnd);
    size_t n_tst = s_pick_distinct(rng, sp->tests, data_rng_below(rng, 3), tst);
    size_t n_med = s_pick_distinct(rng, sp->meds, data_rng_below(rng, 3), med);
    size_t n_pmh = s_pick_distinct(rng, s_pmh, 1 + data_rng_below(rng, 3), pmh);
    size_t n_neg = s_pick_distinct(rng, ot->symptoms, 1 + data_rng_below(rng, 2), neg);
    int show_dx = data_rng_uniform(rng) < 0.45;
    int other_med = data_rng_uniform(rng) < 0.5;
    int other_test = data_rng_uniform(rng) < 0.25;
    const char *dur_unit = s_pick(rng, (const char *const[]){"days", "weeks", "months", NULL});
    int dur = 2 + (int)data_rng_below(rng, 11);
    int hr = 58 + (int)data_rng_below(rng, 50), sbp = 104 + (int)data_rng_below(rng, 50);
    int dbp = 60 + (int)data_rng_below(rng, 30), rr = 12 + (int)data_rng_below(rng, 10);
    double temp = 36.4 + data_rng_uniform(rng) * 1.6;
    const char *dx = s_pick(rng, sp->dx);
    const char *vague = s_pick(rng, (const char *const[]){
        "symptoms as above, etiology under evaluation", "findings as described, workup ongoing",
        "presentation as above, differential reviewed with the patient",
        "clinical picture discussed, further testing ordered", NULL});
    s_sb_t b = {0};
    switch (style) {
    case 0: /* SOAP, full sentences, verbose */
        s_sb_str(&b, "SUBJECTIVE:\n");
        s_sb_printf(&b, "%d-year-old %s presenting with ", age, sex);
        s_list(&b, rng, sp->symptoms, sym, n_sym, ", ", " and ");
        s_sb_printf(&b, " for the past %d %s. ", dur, dur_unit);
        s_sb_str(&b, "Denies ");
        s_list(&b, rng, ot->symptoms, neg, n_neg, ", ", " or ");
        s_sb_str(&b, ". Past medical history is significant for ");
        s_list(&b, rng, s_pmh, pmh, n_pmh, ", ", " and ");
        s_sb_str(&b, ".\nMEDICATIONS: ");
        if (n_med) s_list(&b, rng, sp->meds, med, n_med, "; ", "; ");
        if (other_med) { if (n_med) s_sb_str(&b, "; "); s_fill(&b, rng, s_pick(rng, ot->meds)); }
        if (!n_med && !other_med) s_sb_str(&b, "none");
        s_sb_printf(&b, ".\nOBJECTIVE:\nVitals: BP %d/%d, HR %d, RR %d, T %.1f C. Exam reveals ",
                    sbp, dbp, hr, rr, temp);
        s_list(&b, rng, sp->findings, fnd, n_fnd, ", ", " and ");
        s_sb_str(&b, ".");
        if (n_tst || other_test) {
            s_sb_str(&b, " Studies: ");
            if (n_tst) s_list(&b, rng, sp->tests, tst, n_tst, "; ", "; ");
            if (other_test) { if (n_tst) s_sb_str(&b, "; "); s_fill(&b, rng, s_pick(rng, ot->tests)); }
            s_sb_str(&b, ".");
        }
        s_sb_str(&b, "\nASSESSMENT:\n");
        s_sb_str(&b, show_dx ? dx : vague);
        s_sb_str(&b, ".\nPLAN:\n");
        s_list(&b, rng, s_fillers, fill, s_pick_distinct(rng, s_fillers, 2, fill), " ", " ");
        break;
    case 1: /* terse, abbreviated */
    case 4: /* telegraphic lower-case list */
        s_sb_printf(&b, style == 1 ? "CC: " : "cc - ");
        s_fill(&b, rng, sp->symptoms[sym[0]]);
        s_sb_printf(&b, style == 1 ? "\nHPI: %d%s w/ " : "; %d yo %s, ", age, sexs);
        s_list(&b, rng, sp->symptoms, sym, n_sym, ", ", ", ");
        s_sb_printf(&b, " x %d %s. no ", dur, dur_unit);
        s_list(&b, rng, ot->symptoms, neg, n_neg, ", ", ", ");
        s_sb_str(&b, style == 1 ? ".\nPMH: " : "; pmh ");
        s_list(&b, rng, s_pmh, pmh, n_pmh, ", ", ", ");
        if (n_med || other_med) {
            s_sb_str(&b, style == 1 ? "\nMeds: " : "; meds ");
            if (n_med) s_list(&b, rng, sp->meds, med, n_med, ", ", ", ");
            if (other_med) { if (n_med) s_sb_str(&b, ", "); s_fill(&b, rng, s_pick(rng, ot->meds)); }
        }
        s_sb_printf(&b, style == 1 ? "\nPE: BP %d/%d HR %d RR %d. " : "; vs %d/%d, %d, %d; exam ",
                    sbp, dbp, hr, rr);
        s_list(&b, rng, sp->findings, fnd, n_fnd, ", ", ", ");
        if (n_tst || other_test) {
            s_sb_str(&b, style == 1 ? "\nData: " : "; data ");
            if (n_tst) s_list(&b, rng, sp->tests, tst, n_tst, ", ", ", ");
            if (other_test) { if (n_tst) s_sb_str(&b, ", "); s_fill(&b, rng, s_pick(rng, ot->tests)); }
        }
        s_sb_str(&b, style == 1 ? "\nA/P: " : "; imp ");
        s_sb_str(&b, show_dx ? dx : "see above, w/u pending");
        break;
    case 2: /* narrative paragraph */
        s_sb_printf(&b, "The patient is %s %d-year-old %s who comes in because of ",
                    (age >= 80 || age == 18 || age == 11) ? "an" : "a", age, sex);
        s_list(&b, rng, sp->symptoms, sym, n_sym, ", ", ", along with ");
        s_sb_printf(&b, ", which began about %d %s ago. ", dur, dur_unit);
        s_sb_str(&b, "There is a history of ");
        s_list(&b, rng, s_pmh, pmh, n_pmh, ", ", " as well as ");
        s_sb_str(&b, ". The patient specifically denies ");
        s_list(&b, rng, ot->symptoms, neg, n_neg, ", ", " and ");
        s_sb_str(&b, ". ");
        if (n_med || other_med) {
            s_sb_str(&b, "Current medications include ");
            if (n_med) s_list(&b, rng, sp->meds, med, n_med, ", ", " and ");
            if (other_med) { if (n_med) s_sb_str(&b, " and "); s_fill(&b, rng, s_pick(rng, ot->meds)); }
            s_sb_str(&b, ". ");
        }
        s_sb_printf(&b, "On examination the blood pressure was %d/%d with a pulse of %d; "
                        "there was ", sbp, dbp, hr);
        s_list(&b, rng, sp->findings, fnd, n_fnd, ", ", " and ");
        s_sb_str(&b, ". ");
        if (n_tst) {
            s_sb_str(&b, "Workup was notable for ");
            s_list(&b, rng, sp->tests, tst, n_tst, ", ", " and ");
            s_sb_str(&b, ". ");
        }
        if (show_dx) s_sb_printf(&b, "The overall impression is %s. ", dx);
        else s_sb_printf(&b, "Impression: %s. ", vague);
        s_list(&b, rng, s_fillers, fill, s_pick_distinct(rng, s_fillers, 3, fill), " ", " ");
        break;
    default: /* structured EHR form with bullets */
        s_sb_str(&b, "Reason for visit: ");
        s_fill(&b, rng, sp->symptoms[sym[0]]);
        s_sb_printf(&b, "\nAge/sex: %d %s\nSymptoms:\n", age, sexs);
        for (size_t i = 0; i < n_sym; i++) {
            s_sb_str(&b, "- ");
            s_fill(&b, rng, sp->symptoms[sym[i]]);
            s_sb_str(&b, "\n");
        }
        s_sb_str(&b, "Pertinent negatives: ");
        s_list(&b, rng, ot->symptoms, neg, n_neg, ", ", ", ");
        s_sb_str(&b, "\nProblem list: ");
        s_list(&b, rng, s_pmh, pmh, n_pmh, "; ", "; ");
        s_sb_str(&b, "\nHome medications: ");
        if (n_med) s_list(&b, rng, sp->meds, med, n_med, "; ", "; ");
        if (other_med) { if (n_med) s_sb_str(&b, "; "); s_fill(&b, rng, s_pick(rng, ot->meds)); }
        if (!n_med && !other_med) s_sb_str(&b, "none reported");
        s_sb_printf(&b, "\nVitals: BP %d/%d | HR %d | RR %d | Temp %.1f C\nExam findings:\n",
                    sbp, dbp, hr, rr, temp);
        for (size_t i = 0; i < n_fnd; i++) {
            s_sb_str(&b, "- ");
            s_fill(&b, rng, sp->findings[fnd[i]]);
            s_sb_str(&b, "\n");
        }
        if (n_tst || other_test) {
            s_sb_str(&b, "Results: ");
            if (n_tst) s_list(&b, rng, sp->tests, tst, n_tst, "; ", "; ");
            if (other_test) { if (n_tst) s_sb_str(&b, "; "); s_fill(&b, rng, s_pick(rng, ot->tests)); }
            s_sb_str(&b, "\n");
        }
        s_sb_str(&b, "Impression: ");
        s_sb_str(&b, show_dx ? dx : vague);
        break;
    }
    if (b.oom) { free(b.p); return NULL; }
    if (style == 1 || style == 4) {
        size_t n;
        char *a = s_abbreviate(b.p, &n);
        free(b.p);
        if (!a) return NULL;
        if (style == 4)
            for (char *c = a; *c; c++) if (*c >= 'A' && *c <= 'Z' && !(c[1] >= 'A' && c[1] <= 'Z') &&
                                            !(c > a && c[-1] >= 'A' && c[-1] <= 'Z')) *c = (char)(*c + 32);
        if (len_out) *len_out = n;
        return a;
    }
    if (len_out) *len_out = b.len;
    return b.p;
}

/* ---------------------------------------------------------------- sites */

void synth_opts_init(synth_opts_t *opts)
{
    opts->sites = 3;
    opts->records_per_site = 400;
    opts->seed = 1;
    opts->alpha = 0.5;
    opts->format = DATA_FORMAT_JSONL;
    opts->test_per_site = 0;
}

static double s_normal(uint64_t *rng)
{
    double u1 = data_rng_uniform(rng), u2 = data_rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Gamma(shape, 1) by Marsaglia and Tsang; shape < 1 through the U^(1/a) boost. */
static double s_gamma(uint64_t *rng, double a)
{
    if (a < 1) {
        double u = data_rng_uniform(rng);
        return s_gamma(rng, a + 1) * pow(u < 1e-300 ? 1e-300 : u, 1.0 / a);
    }
    double d = a - 1.0 / 3, c = 1.0 / sqrt(9 * d);
    for (;;) {
        double x = s_normal(rng), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = data_rng_uniform(rng);
        if (log(u < 1e-300 ? 1e-300 : u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

void synth_site_label_probs(const synth_opts_t *opts, int site, double *probs)
{
    uint64_t rng = opts->seed * 0x9E3779B97F4A7C15ull + (uint64_t)site * 0xD1B54A32D192ED03ull + 17;
    double sum = 0;
    for (size_t k = 0; k < S_N_LABELS; k++) sum += probs[k] = s_gamma(&rng, opts->alpha);
    /* A small floor keeps every label present at every site, so local validation and the
     * pooled test stay meaningful for local-only baselines. */
    const double floor_mix = 0.08;
    for (size_t k = 0; k < S_N_LABELS; k++)
        probs[k] = (1 - floor_mix) * (sum > 0 ? probs[k] / sum : 1.0 / S_N_LABELS) +
                   floor_mix / S_N_LABELS;
}

static int s_mkdir(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", path, strerror(errno));
    return 0;
}

static void s_write_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"') fputs("\\\"", f);
        else if (c == '\\') fputs("\\\\", f);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void s_write_csv_field(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void s_write_record(FILE *f, data_format_t fmt, const char *text, const char *label)
{
    if (fmt == DATA_FORMAT_CSV) {
        s_write_csv_field(f, text);
        fputc(',', f);
        s_write_csv_field(f, label);
        fputs("\r\n", f);
    } else {
        fputs("{\"text\": ", f);
        s_write_json_string(f, text);
        fputs(", \"label\": ", f);
        s_write_json_string(f, label);
        fputs("}\n", f);
    }
}

static FILE *s_open(const char *path, data_format_t fmt)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        medfl_error_set(MEDFL_EIO, "%s: cannot create: %s", path, strerror(errno));
        return NULL;
    }
    if (fmt == DATA_FORMAT_CSV) fputs("text,label\r\n", f);
    return f;
}

static int s_close(FILE *f, const char *path, int rc)
{
    if (!f) return rc;
    if (ferror(f) && rc == 0) rc = medfl_error_set(MEDFL_EIO, "%s: write error", path);
    if (fclose(f) != 0 && rc == 0) rc = medfl_error_set(MEDFL_EIO, "%s: write error", path);
    return rc;
}

int synth_write(const synth_opts_t *opts, const char *dir)
{
    if (opts->sites < 1 || opts->sites > 1000)
        return medfl_error_set(MEDFL_EINVAL, "synth: --sites must be within 1..1000, got %d",
                               opts->sites);
    if (opts->records_per_site < 10 || opts->records_per_site > 10000000)
        return medfl_error_set(MEDFL_EINVAL, "synth: --records-per-site must be within "
                               "10..10000000, got %d", opts->records_per_site);
    if (!(opts->alpha > 0.01 && opts->alpha <= 1000))
        return medfl_error_set(MEDFL_EINVAL, "synth: --alpha must be within (0.01, 1000], got %g",
                               opts->alpha);
    if (s_mkdir(dir) != 0) return -1;
    const char *ext = opts->format == DATA_FORMAT_CSV ? "csv" : "jsonl";
    size_t n_labels;
    const char *const *labels = synth_labels(&n_labels);
    char path[4096];
    int rc = 0;
    snprintf(path, sizeof path, "%s/labels.txt", dir);
    FILE *lf = fopen(path, "w");
    if (!lf) return medfl_error_set(MEDFL_EIO, "%s: cannot create: %s", path, strerror(errno));
    for (size_t k = 0; k < n_labels; k++) fprintf(lf, "%s%s", k ? "," : "", labels[k]);
    fputc('\n', lf);
    if ((rc = s_close(lf, path, 0)) != 0) return rc;

    char pooled_path[4096];
    snprintf(pooled_path, sizeof pooled_path, "%s/pooled-test.%s", dir, ext);
    FILE *pooled = s_open(pooled_path, opts->format);
    if (!pooled) return -1;
    double probs[S_N_LABELS];
    for (int site = 0; site < opts->sites && rc == 0; site++) {
        char site_dir[4096];
        snprintf(site_dir, sizeof site_dir, "%s/site-%d", dir, site + 1);
        if ((rc = s_mkdir(site_dir)) != 0) break;
        synth_site_label_probs(opts, site, probs);
        int n = opts->records_per_site;
        int n_test = n * 15 / 100, n_valid = n * 15 / 100;
        /* A larger test set only appends notes: train and valid stay byte-identical. */
        int total = opts->test_per_site > 0 ? n - n_test + opts->test_per_site : n;
        int cut[3] = {n - n_valid - n_test, n - n_test, total};
        const char *names[3] = {"train", "valid", "test"};
        uint64_t rng = opts->seed ^ (0xA0761D6478BD642Full * (uint64_t)(site + 1));
        int base_style = site % SYNTH_N_STYLES;
        int from = 0;
        size_t counts[S_N_LABELS] = {0};
        for (int part = 0; part < 3 && rc == 0; part++) {
            snprintf(path, sizeof path, "%s/%s.%s", site_dir, names[part], ext);
            FILE *f = s_open(path, opts->format);
            if (!f) { rc = -1; break; }
            for (int r = from; r < cut[part] && rc == 0; r++) {
                double u = data_rng_uniform(&rng), acc = 0;
                size_t label = n_labels - 1;
                for (size_t k = 0; k < n_labels; k++) {
                    acc += probs[k];
                    if (u < acc) { label = k; break; }
                }
                /* Most notes come in the site's house style, some from other writers. */
                int style = data_rng_uniform(&rng) < 0.85 ? base_style
                                                          : (int)data_rng_below(&rng, SYNTH_N_STYLES);
                char *note = synth_note(&rng, (int)label, style, NULL);
                if (!note) { rc = medfl_error_set(MEDFL_ENOMEM, "synth: out of memory"); break; }
                s_write_record(f, opts->format, note, labels[label]);
                if (part == 2) s_write_record(pooled, opts->format, note, labels[label]);
                counts[label]++;
                free(note);
            }
            rc = s_close(f, path, rc);
            from = cut[part];
        }
        if (rc == 0) {
            char mix[512] = "";
            size_t used = 0;
            for (size_t k = 0; k < n_labels && used < sizeof mix; k++)
                used += (size_t)snprintf(mix + used, sizeof mix - used, "%s%s=%zu", k ? " " : "",
                                         labels[k], counts[k]);
            LOG_INFO(DATA, "synth site-%d: %d records (style %d): %s", site + 1, n, base_style, mix);
        }
    }
    return s_close(pooled, pooled_path, rc);
}

/* ---------------------------------------------------------------- command */

static void s_synth_usage(FILE *out)
{
    fprintf(out,
            "Usage: medfl-node synth --sites K --records-per-site N --seed S (-o DIR | -c CONFIG)\n"
            "                        [--format jsonl|csv] [--alpha A] [--test-per-site M]\n\n"
            "With -c node.conf and no -o, DIR is STATE_DIR/synth of that config.\n"
            "Writes synthetic de-identified clinical notes labelled with a specialty for K\n"
            "sites: DIR/site-K/{train,valid,test}.jsonl (70/15/15), DIR/pooled-test.jsonl (all\n"
            "sites' test sets) and DIR/labels.txt. Sites differ in label mix (Dirichlet with\n"
            "concentration A, default 0.5; smaller is more skewed) and writing style. The same\n"
            "seed gives byte-identical files. --test-per-site M writes M test notes per site\n"
            "instead of 15 %% of N (train and valid unchanged): a larger yardstick measures\n"
            "macro-F1 with less sampling noise.\n");
}

static int s_parse_int(const char *opt, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return medfl_error_set(MEDFL_EINVAL, "%s: expected an integer in %ld..%ld, got '%s'",
                               opt, lo, hi, v);
    *out = x;
    return 0;
}

int cmd_synth(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_synth_usage(stdout);
        return 0;
    }
    synth_opts_t o;
    synth_opts_init(&o);
    const char *dir = NULL, *config = NULL;
    char state_synth[CFG_STR_MAX + 8];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "medfl-node synth: option '%s' needs a value\n", a);
            s_synth_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        long x;
        if (strcmp(a, "--sites") == 0) {
            if (s_parse_int(a, v, 1, 1000, &x) != 0) return cli_fail("medfl-node");
            o.sites = (int)x;
        } else if (strcmp(a, "--records-per-site") == 0) {
            if (s_parse_int(a, v, 10, 10000000, &x) != 0) return cli_fail("medfl-node");
            o.records_per_site = (int)x;
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end) {
                medfl_error_set(MEDFL_EINVAL, "--seed: expected a non-negative integer, got '%s'", v);
                return cli_fail("medfl-node");
            }
            o.seed = s;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            dir = v;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            config = v;
        } else if (strcmp(a, "--format") == 0) {
            if (data_format_parse(v, &o.format) != 0) return cli_fail("medfl-node");
        } else if (strcmp(a, "--test-per-site") == 0) {
            if (s_parse_int(a, v, 1, 10000000, &x) != 0) return cli_fail("medfl-node");
            o.test_per_site = (int)x;
        } else if (strcmp(a, "--alpha") == 0) {
            char *end;
            o.alpha = strtod(v, &end);
            if (end == v || *end) {
                medfl_error_set(MEDFL_EINVAL, "--alpha: expected a number, got '%s'", v);
                return cli_fail("medfl-node");
            }
        } else {
            fprintf(stderr, "medfl-node synth: unknown option '%s'\n", a);
            s_synth_usage(stderr);
            return 2;
        }
    }
    if (!dir && config) { /* -c: into the node's state folder */
        char state[CFG_STR_MAX];
        if (node_config_path_of(config, "state_dir", "/var/lib/medfl/node", state) != 0)
            return cli_fail("medfl-node synth");
        snprintf(state_synth, sizeof state_synth, "%s/synth", state);
        dir = state_synth;
    }
    if (!dir) {
        fprintf(stderr, "medfl-node synth: -o DIR (or -c node.conf) is required\n");
        s_synth_usage(stderr);
        return 2;
    }
    if (synth_write(&o, dir) != 0) return cli_fail("medfl-node");
    printf("sites: %d\nrecords_per_site: %d\nlabels: %zu\noutput: %s\n", o.sites,
           o.records_per_site, S_N_LABELS, dir);
    return 0;
}
