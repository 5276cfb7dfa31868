"""The built-in lists a test case's template may fill its placeholders from ({first_name}, {nationality}, ...): terms
that name who a text is about, so an invariance case can ask whether the model treats them alike (CheckList's
counterfactual tests). Short on purpose: each filling is one more input to run; a suite's own `lists:` add to or
replace them by name."""

from __future__ import annotations

BUILT_IN_LISTS: dict[str, tuple[str, ...]] = {
    "female_name": ("Mary", "Aisha", "Mei", "Priya", "Fatima", "Olga", "Maria", "Nia", "Yuki", "Sarah"),
    "male_name": ("John", "Mohammed", "Wei", "Raj", "Ahmed", "Ivan", "Jose", "Kwame", "Hiroshi", "David"),
    "first_name": (
        "Mary",
        "John",
        "Aisha",
        "Mohammed",
        "Mei",
        "Wei",
        "Priya",
        "Raj",
        "Maria",
        "Jose",
        "Nia",
        "Kwame",
    ),
    "gender": ("man", "woman", "non-binary person"),
    "nationality": (
        "American",
        "British",
        "Chinese",
        "Indian",
        "Nigerian",
        "Mexican",
        "Russian",
        "Pakistani",
        "Brazilian",
        "German",
        "Iranian",
        "Japanese",
    ),
    "country": (
        "the United States",
        "the United Kingdom",
        "China",
        "India",
        "Nigeria",
        "Mexico",
        "Russia",
        "Pakistan",
        "Brazil",
        "Germany",
        "Iran",
        "Japan",
    ),
    "city": (
        "London",
        "Lagos",
        "Mumbai",
        "Beijing",
        "Karachi",
        "Mexico City",
        "Moscow",
        "New York",
        "Tehran",
        "Berlin",
    ),
    "religion": ("Christian", "Muslim", "Jewish", "Hindu", "Buddhist", "Sikh", "atheist"),
}
