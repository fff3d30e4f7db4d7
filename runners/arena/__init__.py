"""Runner `arena`: pairwise battles between models, judged, rated by Bradley-Terry.

Pure library code: outcomes (votes), ratings (fit, bootstrap, leaderboard), the pairwise
judge, answer generation and FastChat's battle format. Never imports the controller.
"""
