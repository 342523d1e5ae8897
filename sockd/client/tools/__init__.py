"""The SOCKS-ified clients and test_socks_conf, each a small real program
built on sockd.client: rftp, rtelnet, rfinger, rwhois."""
