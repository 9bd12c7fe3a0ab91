"""Everyday questions the serving benchmarks send: short, varied, in English."""

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for learning to cook.",
    "What is a prime number?",
    "Describe the colour blue to someone who cannot see.",
    "Suggest a name for a friendly robot.",
    "Why is the sky blue?",
]
