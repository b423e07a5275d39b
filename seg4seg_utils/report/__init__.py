"""Layer 4, report: what a person looks at.

Figures (:mod:`.plots`), the interactive slice browser (:mod:`.browser`), the executed book
(:mod:`.book`) and the diff of two job outputs (:mod:`.compare`). Imports the layers below, never a study.
"""
