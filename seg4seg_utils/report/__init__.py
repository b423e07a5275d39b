"""Layer 4, report: what a person looks at.

Figures (:mod:`.plots`, :mod:`.patch_plots`, :mod:`.explain_plots`, :mod:`.labelflip_plots`, the landing page's
:mod:`.idea_figure`), the slice browser (:mod:`.browser`: a model of the slices, its figures, a self-contained
HTML view and an ipywidgets view), the executed book (:mod:`.book`) and the diff of two job outputs
(:mod:`.compare`). Imports the layers below, never a study.
"""
