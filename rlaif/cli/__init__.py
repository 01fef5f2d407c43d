"""The `rlaif` command line, the top layer: main commands (`main`), review commands (`review`) and the
errors every command reports as one line (`errors`). It may import every other part of the package;
nothing imports it."""
