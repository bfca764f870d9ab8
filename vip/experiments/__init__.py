"""Training-only experiments on a finished stage: retrain its pruned student on its pairs with other
train.* values (arms), score each arm as the outcome step does, and aggregate arms into tables."""
