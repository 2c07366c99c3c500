"""LASeR: a contextual bandit chooses, per prompt or per batch, which of several reward sources to use.

bandits.py: the algorithms (LinUCB, linear Thompson sampling, Exp3, ε-greedy) and the reward normaliser;
context.py: prompt encoders (the policy's hidden state, or MiniLM); selector.py: the bandit as a reward
source (`kind: bandit`); optimize.py: iterative DPO with the source chosen by the bandit.
"""
