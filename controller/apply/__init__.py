"""Apply: carry out plan actions through the runners and record the results in state."""
