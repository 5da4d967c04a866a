// Simulation model of the part of Lattice's ECP5 MULT18X18D that actpack.hw.dsp uses, written
// from Lattice FPGA-TN-02205 (ECP5 and ECP5-5G sysDSP Usage Guide): 18 x 18 -> 36-bit multiply,
// operands signed or unsigned by SIGNEDA / SIGNEDB; input registers A and B, the pipeline
// register behind the multiplier and the output register, each present when its REG_*_CLK names
// a clock, updated while its REG_*_CE clock enable is high, cleared by its REG_*_RST reset.
//
// Yosys ships only a blackbox of the primitive (cells_bb_ecp5.v); this model is what
// tests/hw/test_hw_dsp.py runs the instance variant of RegisteredMultiply against, cycle by cycle
// beside the behavioural one. The subset, checked at time 0:
// - clocks: CLK0 only (REG_*_CLK "NONE" or "CLK0"); clock enables CE0..CE3; resets RST0..RST3;
// - RESETMODE "SYNC": a reset clears the register at the clock edge whether or not its clock
//   enable is high (reset over enable, as the fabric flip-flops Amaranth's sync domain maps to);
// - every register starts at 0 (GSR clears them at configuration);
// - SOURCEA = SOURCEB = 0 (operands from A / B, not the shift chain), SIGNEDA / SIGNEDB constant
//   (the model takes them as they are, unregistered); C, SRIA / SRIB, the cascade outputs
//   (SROA, SROB, ROA, ROB, ROC, SIGNEDP) and MULT_BYPASS are not modelled.
module MULT18X18D #(
    parameter REG_INPUTA_CLK = "NONE", parameter REG_INPUTA_CE = "CE0", parameter REG_INPUTA_RST = "RST0",
    parameter REG_INPUTB_CLK = "NONE", parameter REG_INPUTB_CE = "CE0", parameter REG_INPUTB_RST = "RST0",
    parameter REG_PIPELINE_CLK = "NONE", parameter REG_PIPELINE_CE = "CE0", parameter REG_PIPELINE_RST = "RST0",
    parameter REG_OUTPUT_CLK = "NONE", parameter REG_OUTPUT_CE = "CE0", parameter REG_OUTPUT_RST = "RST0",
    parameter RESETMODE = "SYNC"
) (
    input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
    input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input CLK0, CE0, CE1, CE2, CE3, RST0, RST1, RST2, RST3,
    output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0
);
    function automatic [1:0] pick(input [8 * 4 - 1:0] name);  // "CE2" -> 2, "RST3" -> 3
        pick = name[1:0];  // the last character, "0".."3" (0x30..0x33)
    endfunction

    function automatic clocked(input [8 * 4 - 1:0] name);  // 1: "CLK0", 0: "NONE"
        clocked = name == "CLK0";
    endfunction

    initial begin : subset
        if (RESETMODE != "SYNC") $fatal(1, "MULT18X18D model: RESETMODE %s", RESETMODE);
        if (REG_INPUTA_CLK != "NONE" && REG_INPUTA_CLK != "CLK0")
            $fatal(1, "MULT18X18D model: REG_INPUTA_CLK %s", REG_INPUTA_CLK);
        if (REG_INPUTB_CLK != "NONE" && REG_INPUTB_CLK != "CLK0")
            $fatal(1, "MULT18X18D model: REG_INPUTB_CLK %s", REG_INPUTB_CLK);
        if (REG_PIPELINE_CLK != "NONE" && REG_PIPELINE_CLK != "CLK0")
            $fatal(1, "MULT18X18D model: REG_PIPELINE_CLK %s", REG_PIPELINE_CLK);
        if (REG_OUTPUT_CLK != "NONE" && REG_OUTPUT_CLK != "CLK0")
            $fatal(1, "MULT18X18D model: REG_OUTPUT_CLK %s", REG_OUTPUT_CLK);
    end

    wire [3:0] ce = {CE3, CE2, CE1, CE0};
    wire [3:0] rst = {RST3, RST2, RST1, RST0};
    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};

    reg [17:0] a_q = 18'd0, b_q = 18'd0;
    reg [35:0] pipe_q = 36'd0, out_q = 36'd0;
    wire [17:0] a_m = clocked(REG_INPUTA_CLK) ? a_q : a;
    wire [17:0] b_m = clocked(REG_INPUTB_CLK) ? b_q : b;
    // both operands extended to 36 bits: the low 36 bits of the product are right for signed,
    // unsigned and mixed operands alike
    wire [35:0] a_x = {{18{SIGNEDA & a_m[17]}}, a_m};
    wire [35:0] b_x = {{18{SIGNEDB & b_m[17]}}, b_m};
    wire [35:0] prod = (SOURCEA | SOURCEB) ? 36'bx : a_x * b_x;
    wire [35:0] pipe_m = clocked(REG_PIPELINE_CLK) ? pipe_q : prod;

    always @(posedge CLK0) begin
        if (rst[pick(REG_INPUTA_RST)]) a_q <= 18'd0;
        else if (ce[pick(REG_INPUTA_CE)]) a_q <= a;
        if (rst[pick(REG_INPUTB_RST)]) b_q <= 18'd0;
        else if (ce[pick(REG_INPUTB_CE)]) b_q <= b;
        if (rst[pick(REG_PIPELINE_RST)]) pipe_q <= 36'd0;
        else if (ce[pick(REG_PIPELINE_CE)]) pipe_q <= prod;
        if (rst[pick(REG_OUTPUT_RST)]) out_q <= 36'd0;
        else if (ce[pick(REG_OUTPUT_CE)]) out_q <= pipe_m;
    end

    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = clocked(REG_OUTPUT_CLK) ? out_q : pipe_m;
endmodule
