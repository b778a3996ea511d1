"""The symptom lexicon: concept -> patterns, matched on lower-cased patient text (see symptoms.py).

Concepts named like `RiskFactors` fields map onto them. `\\w*` in a pattern is compiled as a bounded,
possessive word tail (linear time, issue 15).
"""

from __future__ import annotations

__all__ = ["FAMILY_CONCEPTS", "HISTORY_CONCEPTS", "LEXICON", "NEGATIVE_FORMS", "RELATIVE_CANCER"]

# concept -> patterns; matched on lower-cased text. Concepts named like RiskFactors fields map onto them.
LEXICON: dict[str, tuple[str, ...]] = {
    "itch": (r"itch\w*", r"prurit\w*", r"scratch(?:y|ing)"),
    "pain": (r"pain(?:full?)?", r"hurt\w*", r"sore", r"tender\w*", r"aching|aches?", r"sting(?:s|ing)?"),
    "bleeding": (r"bleed\w*", r"bled", r"bleding", r"blood\w*", r"ooz\w*", r"weep\w*", r"crust\w*", r"scab\w*"),
    "changed_size": (
        r"grow\w*|grew|grown",
        r"enlarg\w*",
        r"(?:getting |got |gotten |become |became )?(?:bigger|larger)",
        r"chang\w* (?:in |its )?size",
        r"size (?:has |have )?chang\w*",
        r"increas\w* in size",
    ),
    "rapid_growth": (
        r"(?:grow\w*|grew|grown|enlarg\w*) (?:very |really )?(?:fast|quickly|rapidly)",
        r"(?:rapid|quick|fast)(?:ly)?[ -](?:grow\w*|enlarg\w*)",
        r"rapid growth",
    ),
    "changed_shape": (r"chang\w* (?:in |its )?shape", r"shape (?:has |have )?chang\w*"),
    "changed": (r"chang(?:ed|es|ing)", r"evolv\w*", r"looks? different"),
    "changed_colour": (
        r"chang\w* (?:in |its )?col(?:ou?|u)r",
        r"col(?:ou?|u)r (?:has |have )?chang\w*",
        r"(?:got|getting|gone|turned|became|become) darker",
        r"darken\w*",
    ),
    "irregular_shape": (r"irregular (?:shape|border|edge)s?", r"ragged (?:border|edge)s?", r"asymmetric\w*"),
    "irregular_colour": (
        r"(?:irregular|uneven|multiple|several|different|many) col(?:ou?|u)rs?",
        r"multi-?col(?:ou?|u)r\w*",
    ),
    "ulceration": (
        r"ulcer\w*",
        r"open sore",
        r"sore (?:that |which )?(?:won'?t|doesn'?t|does not|will not) heal",
        r"(?:won'?t|doesn'?t|does not|will not|not) heal\w*",
        r"non-?healing",
    ),
    "elevation": (r"raised", r"elevated", r"lump\w*", r"bump\w*", r"nodul\w*", r"protrud\w*"),
    "inflammation": (r"inflam\w*", r"swollen|swelling"),
    "fever": (r"fever\w*", r"temperature", r"chills?", r"rigou?rs?", r"pyrexi\w*"),
    "spreading_redness": (
        r"spreading (?:redness|rash|red\w*|infection)",
        r"(?:redness|red area|rash) (?:that |which )?(?:is |has been |keeps )?spreading",
        r"red streaks?",
    ),
    "widespread_blistering": (
        r"(?:widespread|extensive|many|lots of) blisters?",
        r"blister\w* (?:all over|everywhere|over (?:my|the|his|her) (?:whole )?body)",
        r"(?:skin (?:is )?peeling|peeling skin|skin (?:is )?coming off)",
    ),
    "skin_pain": (
        r"skin (?:is |feels )?(?:very |really )?(?:painful|sore|tender|burning)",
        r"(?:painful|burning) skin",
        r"skin (?:hurts|burns)",
    ),
    "near_eye": (
        r"(?:near|around|by|next to|close to|on|above|below|under) (?:my |the |his |her )?(?:left |right )?eyes?",
        r"eyelids?",
        r"forehead",
        r"tip of (?:my |the |his |her )?nose",
        r"periorbital",
    ),
    # a relative's cancer is read through the experiencer ("my sister had skin cancer"), see symptoms.py
    "family_history_melanoma": (r"family history of melanoma", r"melanoma runs in (?:my|the|our) family"),
    "family_history_skin_cancer": (
        r"family history of (?:skin cancer|non-?melanoma skin cancer|basal cell\w*|bcc|squamous cell\w*|scc)",
        r"skin cancer runs in (?:my|the|our) family",
    ),
    "personal_history_skin_cancer": (
        r"(?:history of|had|has had|have had|previous|prior|past|diagnosed with|treated for|died (?:of|from)) "
        r"(?:a |an )?(?:skin cancer|melanoma|basal cell(?: carcinoma)?|bcc|squamous cell(?: carcinoma)?|scc)s?",
    ),
    "immunosuppression": (
        r"(?:kidney|liver|heart|lung|organ|renal) transplant\w*",
        r"transplant\w*",
        r"immuno-?suppress\w*",
        r"immuno-?compromised",
        r"(?:on|taking|takes) (?:methotrexate|azathioprine|tacrolimus|ciclosporin|cyclosporine|mycophenolate|"
        r"biologics?|steroids|prednisolone|prednisone|chemo\w*)",
        r"hiv",
    ),
    "sunburn_history": (r"sun ?burn\w*",),
    "many_moles": (
        r"(?:many|lots of|numerous|loads of|a lot of|hundreds of|over 50|more than 50|> ?50) (?:moles|nevi|naevi)",
    ),
    "shingles": (r"shingles", r"zoster"),
}

# words that deny a concept by themselves
NEGATIVE_FORMS: dict[str, tuple[str, ...]] = {
    "pain": (r"painless", r"pain-free"),
    "elevation": (r"flat",),
    "itch": (r"non-?itchy",),
    "bleeding": (r"non-?bleeding",),
}

# concepts that are about the past by nature: "as a child", "in 2015" do not make them historical
HISTORY_CONCEPTS = frozenset(
    {
        "sunburn_history",
        "personal_history_skin_cancer",
        "family_history_melanoma",
        "family_history_skin_cancer",
        "immunosuppression",
        "many_moles",
    }
)
# concepts that already name another person: an experiencer trigger says nothing more about them
FAMILY_CONCEPTS = frozenset({"family_history_melanoma", "family_history_skin_cancer"})
# a skin cancer said of another person ("my sister had skin cancer") is the patient's family history
RELATIVE_CANCER = ("personal_history_skin_cancer", "family_history_melanoma", "family_history_skin_cancer")
