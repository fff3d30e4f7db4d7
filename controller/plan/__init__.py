"""Planning: pure functions from (desired, observed) state to a Plan of typed actions."""
