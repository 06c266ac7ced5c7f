"""Prompts of a generated length in tokens, for the ``{ tokens = N }`` prompts of a scenario.

We cannot use the server's tokenizer (we do not know it), so the text is built from common
lowercase English words that are one token each, with a leading space, in GPT-2, Llama and
SmolLM2 style BPE vocabularies, in short sentences ending in a period (one more token). The
same label and length always give the same text (seeded), so runs compare. Measured with
SmolLM2's tokenizer the text comes within 1 % of the length asked for
(tests/scenarios/test_prompts.py).
"""

from __future__ import annotations

import random

INSTRUCTION = "Summarize the following notes in three sentences."
"""Put first so the model has something to do with the filler."""
INSTRUCTION_TOKENS = 12
"""The instruction and the blank line after it, counted with SmolLM2's BPE."""

MAX_TOKENS = 131_072

WORDS = tuple(
    """
    the of and to in is that for it as with was on be by at this are from or have an they which
    one you were all we there would their will when who been has more if no out so what up its
    about than into them can only other new some could time these two may then do first any now
    such like our over even most made after also did many before must through back years where
    much your way well down should because each just those people how too little state good
    very make world still own see work long here get both between life being under never day
    same another know while last might great old year off come since against go came right used
    take three model data memory system value speed cache server request token layer test power
    line price water light point order market power group number service level report
    """.split()  # noqa: SIM905 - a word list reads best as words
)
"""Words of one token each (with their leading space) in the common BPE vocabularies."""


def generated_text(tokens: int, label: str = "") -> str:
    """About ``tokens`` tokens of text: the instruction, then seeded filler sentences.

    Args:
        tokens: the length wanted, 1..131072. Below the instruction's own length the text is
            filler only.
        label: the prompt's label; part of the seed, so two prompts of one length differ.
    """
    if not 1 <= tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be 1..{MAX_TOKENS}, got {tokens}")
    rng = random.Random(f"llmtop:{label}:{tokens}")
    parts: list[str] = []
    left = tokens
    if tokens > 4 * INSTRUCTION_TOKENS:
        parts.append(INSTRUCTION + "\n\n")
        left -= INSTRUCTION_TOKENS
    sentence = 0
    words: list[str] = []
    while left > 0:
        if sentence == 0:
            sentence = rng.randint(6, 14)
        if left == 1 or sentence == 1:
            # the period ends a sentence and costs a token; a lone token left is a word
            if left == 1 and sentence > 1:
                words.append(rng.choice(WORDS))
                left -= 1
                break
            words.append(rng.choice(WORDS) + ".")
            left -= 2
            sentence = 0
            continue
        words.append(rng.choice(WORDS))
        left -= 1
        sentence -= 1
    text = " ".join(words)
    return "".join(parts) + text
