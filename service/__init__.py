"""HTTP-free service logic for dermtriage: image intake and request handling helpers."""
