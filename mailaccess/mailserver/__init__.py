"""What the mail servers ask: the Dovecot auth policy, the Postfix policy daemon, counters.

Protocol parsing lives in pure functions; the servers and Redis access around them.
"""
