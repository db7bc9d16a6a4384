"""Draft service: drafters that propose a token tree per sequence per step."""
