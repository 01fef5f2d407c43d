"""RLAIF preference-data pipeline.

The base modules here are what every layer uses: the records (`schema`), the configuration (`config`),
local models (`models`), run directory files (`run_directory`, `run_files`), human-labelled sets
(`labelled_data`), progress lines (`progress`) and text for messages (`message_text`). They import no other
part of the package. Layers above them, each importing only downwards (checked by `make lint`):

    cli  >  flows  >  evaluation  >  training | pipeline  >  judges | review  >  generation  >  base
"""
