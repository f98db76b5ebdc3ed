"""The tests, a package so that its support modules (`tests.stack`, `tests.services`, `tests.container`) import by
name from the tests and from `bench/` alike."""
