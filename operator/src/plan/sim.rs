//! Randomised simulation of the decision core (see the module doc once written).
