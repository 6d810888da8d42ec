# The programmed-mode example of the seed article (seed/000_2225a31b724e632c.txt), in its
# Python 3 form and otherwise unchanged: run as `--mule=seed_mule.py`.
# ruff: noqa: I001
# fmt: off
import uwsgi
from threading import Thread
import time

def loop1():
    while True:
        print("loop1: Waiting for messages... yawn.")
        message = uwsgi.mule_get_msg()
        print(message)

def loop2():
    print("Hi! I am loop2.")
    while True:
        time.sleep(2)
        print("This is a thread!")

t = Thread(target=loop2)
t.daemon = True
t.start()

if __name__ == '__main__':
    loop1()
