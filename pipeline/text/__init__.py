"""Text engines shared by stages: code that measures or classifies text and knows
nothing of stages, configs or removal decisions, so that any stage (or a tool such as
calibration) can use it without importing another stage.

``script``  which script a row is written in (the CJK share of its letters)
``cjk``     the CJK rows of a whole column, decided cheaply on the UTF-8 bytes
``fold``    dedup keys that ignore full-width forms and Traditional script
``stats``   Gopher-style quality statistics (``quality``, ``near_dedup``'s ``keep: quality``)
``ngrams``  word and character n-grams for contamination matching
``parts``   the prompt and response parts of a row, for any record shape

Thresholds, gates and what to drop stay with the stage that decides."""
