"""The test suite, a package so that `tests.helpers` imports however pytest is started."""
