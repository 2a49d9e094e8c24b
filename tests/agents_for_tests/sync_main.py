def main(sys, args):
    return 1
