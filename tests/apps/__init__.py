"""Small user apps for the tests: job types declared as a user would."""
