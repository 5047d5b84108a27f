"""The shapes of the f-softargmax operators on two and three classes (figures, not training)."""
