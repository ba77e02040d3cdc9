"""Text engines shared by stages: code that measures or classifies text and knows
nothing of stages, configs or removal decisions, so that any stage (or a tool such as
calibration) can use it without importing another stage. Today that is the Gopher-style
statistics of :mod:`pipeline.text.stats`, read by ``quality`` and by ``near_dedup``'s
``keep: quality``; script detection belongs here too when it moves out of its stage.
Thresholds, gates and what to drop stay with the stage that decides."""
