"""Fixed real text for the peer comparison: the same words, hence the same token ids, on every side."""

from __future__ import annotations

# 40 sentences of mixed topics and lengths for MiniLM (batch 32 uses the first 32; accuracy uses all).
SENTENCES: list[str] = [
    "The cat sat on the warm windowsill and watched the rain.",
    "A man is playing a guitar on a street corner.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "The mitochondria is the powerhouse of the cell.",
    "She finished the marathon in just under four hours despite the heat.",
    "Python lists are mutable, while tuples cannot be changed after creation.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Fresh basil, tomatoes and mozzarella make a simple summer salad.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Please remember to bring your passport and a printed copy of the ticket.",
    "Heavy snowfall closed the mountain pass for the third day in a row.",
    "The new library opens at nine in the morning on weekdays.",
    "Quantum computers use qubits, which can represent zero and one at once.",
    "Two children are building a sandcastle near the water's edge.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Our flight was delayed because of a technical problem with the engine.",
    "Photosynthesis converts light energy into chemical energy stored in sugar.",
    "He apologised for the misunderstanding and offered to pay for the damage.",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Regular exercise lowers the risk of heart disease and improves sleep.",
    "The river burst its banks and flooded several villages downstream.",
    "A database index speeds up reads at the cost of slower writes.",
    "My grandmother grew up on a farm with cows, goats and a stubborn donkey.",
    "The museum's new exhibition explores the history of early photography.",
    "Customers complained that the update drained their phone batteries quickly.",
    "The referee showed a red card in the final minute of the match.",
    "Volcanic ash can disrupt air travel across an entire continent.",
    "The startup raised twelve million dollars to expand into Europe.",
    "A woman is slicing an onion on a wooden cutting board.",
    "The treaty was signed by all member states after years of negotiation.",
    "Bees communicate the location of flowers through a waggle dance.",
    "The train to the airport leaves every fifteen minutes from platform four.",
    "Reading before bed helps many people fall asleep more easily.",
    "The compiler reported an error on line forty-two of the main module.",
    "Wind turbines generated more electricity than coal for the first time this year.",
    "The detective noticed that the window had been opened from the inside.",
    "Children learn languages faster when they are exposed to them early.",
    "The bakery on the corner sells the best croissants in town.",
    "An earthquake of magnitude six struck off the coast early on Sunday.",
]

# Decoder prompt (the first 128 tokens are used) for TTFT and decode timing.
PROMPT_TEXT = (
    "The history of the printing press begins long before Johannes Gutenberg. In China, woodblock "
    "printing was used as early as the seventh century to reproduce Buddhist texts, and by the eleventh "
    "century the craftsman Bi Sheng had invented movable type made of baked clay. Korean printers later "
    "cast movable type in bronze, and the oldest surviving book printed this way dates from 1377. "
    "Gutenberg's contribution in the fifteenth century was a complete system: a hand mould for casting "
    "metal type quickly and precisely, an alloy of lead, tin and antimony that melted at a low temperature, "
    "an oil-based ink that stuck to metal, and a screw press adapted from the ones used to make wine. "
    "Within fifty years of his first Bible, printing shops had opened in more than two hundred European "
    "cities, and millions of books were in circulation. Historians still debate how much of the "
    "Reformation, the scientific revolution and the rise of literacy can be traced to this change."
)

# Teacher-forced accuracy text (the first 192 tokens are used): every side predicts each next token.
EVAL_TEXT = (
    "A binary search finds an item in a sorted list by repeatedly halving the part of the list that "
    "could contain it. You start by comparing the target with the middle element. If they are equal, "
    "the search is over. If the target is smaller, it can only be in the left half, so you discard the "
    "right half and repeat; if it is larger, you discard the left half instead. Because the remaining "
    "range halves at every step, a list of one million items needs at most twenty comparisons, which "
    "is why binary search is one of the first algorithms that programmers learn. The idea is simple, "
    "but the details are easy to get wrong. A classic mistake is computing the middle index as the sum "
    "of the low and high indices divided by two, which can overflow in languages with fixed-size "
    "integers; writing it as low plus half the difference avoids the problem. Another is an off-by-one "
    "error in the loop condition, which either misses the last candidate or loops forever. Many "
    "standard libraries provide a tested implementation, such as the bisect module in Python, and "
    "using it is usually wiser than writing your own. Binary search also generalises beyond lists: "
    "whenever a yes-or-no question changes its answer exactly once over an ordered range, the same "
    "halving strategy finds the boundary, whether the range is an array, a set of version numbers or "
    "the possible values of a numerical parameter."
)
