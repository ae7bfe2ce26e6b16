"""Jobs over the runtime's stream: predict, evaluate, pseudo-label and analyze; each a loop that
takes predictions in input order and hands them to ``formats``. The maths they own lives beside them: IoU
(``metrics``) and the pseudo-label rule (``pseudo_rule``)."""
