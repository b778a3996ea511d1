"""What dermatology knows, as data: the condition taxonomy, risk factors, cited priors, the symptom reader.

Runtime room. Imports nothing else from `models` but itself; no torch.
"""
