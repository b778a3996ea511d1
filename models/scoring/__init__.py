"""Numbers per condition for one answer: zero-shot image scores, fusion with symptoms and risk factors, urgency.

Runtime room. May import `models.backends` and `models.knowledge`; never `models.fitting`.
"""
